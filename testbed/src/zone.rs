//! Names of the cluster domain and how a query is answered (no I/O).

use std::net::Ipv4Addr;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};

/// TTL of every answer: short, so tests see Service changes at once.
pub const TTL: u32 = 5;

/// What the cluster knows about a name inside the cluster domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ZoneLookup {
    /// The name does not exist (NXDOMAIN).
    NotFound,
    /// The name exists; its A records (may be empty: NOERROR without answers).
    Found(Vec<Ipv4Addr>),
}

/// A source of cluster records. `labels` are the lowercase labels of the
/// query name in front of the cluster domain, e.g. `["web", "default", "svc"]`.
pub trait Zone: Send + Sync + 'static {
    fn service(&self, namespace: &str, name: &str) -> ZoneLookup;
    /// The addresses of a headless Service's endpoint named `host` (its hostname,
    /// or its address written with dashes).
    fn endpoint(&self, namespace: &str, service: &str, host: &str) -> ZoneLookup;

    fn lookup(&self, labels: &[String]) -> ZoneLookup {
        let l: Vec<&str> = labels.iter().map(String::as_str).collect();
        match l.as_slice() {
            [] | ["svc"] | ["pod"] | [_, "svc"] | [_, "pod"] => ZoneLookup::Found(vec![]),
            [name, ns, "svc"] => self.service(ns, name),
            [host, svc, ns, "svc"] => self.endpoint(ns, svc, host),
            [ip, _ns, "pod"] => match dashed_ip(ip) {
                Some(ip) => ZoneLookup::Found(vec![ip]),
                None => ZoneLookup::NotFound,
            },
            _ => ZoneLookup::NotFound,
        }
    }
}

/// `172-17-0-5` -> 172.17.0.5
pub fn dashed_ip(label: &str) -> Option<Ipv4Addr> {
    label.replace('-', ".").parse().ok()
}

/// How to answer one parsed request.
#[derive(Debug)]
pub enum Answer {
    /// A complete response, ready to encode.
    Reply(Message),
    /// The name is outside the cluster domain: forward the raw request upstream.
    Forward,
}

/// Answers `request` from `zone` if its name lies inside `domain`.
/// `forwarding` says whether outside names may be forwarded (else: REFUSED).
pub fn answer(zone: &dyn Zone, domain: &Name, request: &Message, forwarding: bool) -> Answer {
    let mut resp = Message::new(
        request.metadata.id,
        MessageType::Response,
        request.metadata.op_code,
    );
    resp.metadata.recursion_desired = request.metadata.recursion_desired;
    resp.metadata.recursion_available = forwarding;
    if request.edns.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(1232);
        resp.set_edns(edns);
    }
    if request.metadata.message_type != MessageType::Query
        || request.metadata.op_code != OpCode::Query
    {
        resp.metadata.response_code = ResponseCode::NotImp;
        return Answer::Reply(resp);
    }
    let [query] = request.queries.as_slice() else {
        resp.metadata.response_code = ResponseCode::FormErr;
        return Answer::Reply(resp);
    };
    resp.add_query(query.clone());
    let qname = query.name().to_lowercase();
    if !domain.zone_of(&qname) {
        if forwarding {
            return Answer::Forward;
        }
        resp.metadata.response_code = ResponseCode::Refused;
        return Answer::Reply(resp);
    }
    resp.metadata.authoritative = true;
    let extra = usize::from(qname.num_labels()).saturating_sub(usize::from(domain.num_labels()));
    let labels: Vec<String> = qname
        .iter()
        .take(extra)
        .map(|l| String::from_utf8_lossy(l).into_owned())
        .collect();
    match zone.lookup(&labels) {
        ZoneLookup::NotFound => resp.metadata.response_code = ResponseCode::NXDomain,
        ZoneLookup::Found(ips) => {
            if matches!(query.query_type(), RecordType::A | RecordType::ANY) {
                for ip in ips {
                    resp.add_answer(Record::from_rdata(
                        query.name().clone(),
                        TTL,
                        RData::A(A(ip)),
                    ));
                }
            }
        }
    }
    Answer::Reply(resp)
}

/// Encodes `resp`; over UDP, a response larger than the client accepts is truncated (TC set).
pub fn encode(resp: &Message, request: &Message, udp: bool) -> Option<Vec<u8>> {
    let bytes = resp.to_vec().ok()?;
    let limit = if udp {
        usize::from(request.max_payload().max(512))
    } else {
        65535
    };
    if bytes.len() <= limit {
        return Some(bytes);
    }
    resp.truncate().to_vec().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;

    struct Fixed;
    impl Zone for Fixed {
        fn service(&self, ns: &str, name: &str) -> ZoneLookup {
            match (ns, name) {
                ("default", "web") => ZoneLookup::Found(vec![Ipv4Addr::new(10, 96, 0, 10)]),
                ("default", "headless") => ZoneLookup::Found(vec![]),
                _ => ZoneLookup::NotFound,
            }
        }
        fn endpoint(&self, ns: &str, svc: &str, host: &str) -> ZoneLookup {
            if (ns, svc, host) == ("default", "headless", "db-0") {
                ZoneLookup::Found(vec![Ipv4Addr::new(172, 17, 0, 9)])
            } else {
                ZoneLookup::NotFound
            }
        }
    }

    fn ask(name: &str, t: RecordType, fwd: bool) -> Answer {
        let mut q = Message::query();
        q.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
        answer(
            &Fixed,
            &Name::from_ascii("cluster.local.").unwrap(),
            &q,
            fwd,
        )
    }
    fn reply(a: Answer) -> Message {
        match a {
            Answer::Reply(m) => m,
            Answer::Forward => panic!("forwarded"),
        }
    }

    #[test]
    fn service_names() {
        let m = reply(ask("Web.default.svc.cluster.local.", RecordType::A, false));
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert_eq!(m.answers.len(), 1);
        let m = reply(ask(
            "web.default.svc.cluster.local.",
            RecordType::AAAA,
            false,
        ));
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.answers.is_empty());
        let m = reply(ask("nope.default.svc.cluster.local.", RecordType::A, false));
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        let m = reply(ask(
            "db-0.headless.default.svc.cluster.local.",
            RecordType::A,
            false,
        ));
        assert_eq!(m.answers.len(), 1);
        let m = reply(ask(
            "172-17-0-4.default.pod.cluster.local.",
            RecordType::A,
            false,
        ));
        assert_eq!(m.answers.len(), 1);
    }

    #[test]
    fn outside_names() {
        let m = reply(ask("example.com.", RecordType::A, false));
        assert_eq!(m.metadata.response_code, ResponseCode::Refused);
        assert!(matches!(
            ask("example.com.", RecordType::A, true),
            Answer::Forward
        ));
    }
}
