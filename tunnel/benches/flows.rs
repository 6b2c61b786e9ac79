//! The per-peer stack (`NetStack`, smoltcp in any-IP mode) per packet:
//! a data segment of an existing flow in (input, poll, read, the ACK out) with
//! 1, 100 and 2000 established flows; a data segment out; and a new flow
//! (SYN in: flow table insert, listening socket, SYN-ACK out).
//!
//! The peer side is raw packets built here; the stack's receive checksums
//! are not verified (WireGuard authenticates), so segments are reused with
//! only their sequence/ack numbers patched.

mod common;

use common::{OWN_IP, PEER_IP, SERVICE};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;
use std::net::SocketAddrV4;
use std::time::{Duration, Instant};
use tunnel::packet::{TCP_ACK, TCP_SYN};
use tunnel::{Input, NetStack, SocketHandle, StackConfig, TcpState};

const PEER_ISN: u32 = 1_000_000;
const PSH: u8 = 0x08;
/// Simulated time per iteration: small, so no keep-alive or retransmission
/// timer (seconds) fires during a bench.
const TICK: Duration = Duration::from_nanos(100);

struct Flow {
    handle: SocketHandle,
    remote: SocketAddrV4,
    /// Next sequence number the peer sends.
    peer_seq: u32,
    /// Next sequence number the stack sends (what the peer acknowledges).
    own_seq: u32,
}

fn stack(now: Instant) -> NetStack {
    NetStack::new(StackConfig::new(OWN_IP, 1420), now)
}

fn drain(st: &mut NetStack) -> usize {
    let mut n = 0;
    while let Some(p) = st.pop_output() {
        n += 1;
        st.recycle(p);
    }
    n
}

/// Three-way handshake from peer port `port`; the flow is established.
fn establish(st: &mut NetStack, now: Instant, port: u16) -> Flow {
    let remote = SocketAddrV4::new(PEER_IP, port);
    let syn = common::tcp_segment(
        remote,
        SERVICE,
        PEER_ISN,
        0,
        TCP_SYN,
        &common::syn_options(common::MSS as u16),
        0,
    );
    let handle = match st.input(&syn) {
        Input::NewTcp { handle, tuple } => {
            assert_eq!(tuple.remote, remote);
            handle
        }
        other => panic!("SYN not taken: {other:?}"),
    };
    st.poll(now);
    let synack = st.pop_output().expect("SYN-ACK");
    assert_eq!(
        common::tcp_flags(&synack) & (TCP_SYN | TCP_ACK),
        TCP_SYN | TCP_ACK
    );
    let own_seq = common::seq_of(&synack).wrapping_add(1);
    st.recycle(synack);
    drain(st);
    let ack = common::tcp_segment(remote, SERVICE, PEER_ISN + 1, own_seq, TCP_ACK, &[], 0);
    assert_eq!(st.input(&ack), Input::Queued);
    st.poll(now);
    drain(st);
    assert_eq!(st.tcp(handle).state(), TcpState::Established);
    Flow {
        handle,
        remote,
        peer_seq: PEER_ISN + 1,
        own_seq,
    }
}

/// A stack with `n` established flows from peer ports 10000.. .
fn with_flows(n: usize, now: Instant) -> (NetStack, Vec<Flow>) {
    let mut st = stack(now);
    let flows: Vec<Flow> = (0..n)
        .map(|i| establish(&mut st, now, 10000 + i as u16))
        .collect();
    assert_eq!(st.tcp_flows(), n);
    (st, flows)
}

/// Upload direction: one 1420-byte data segment of an existing flow in; the
/// stack queues it, smoltcp finds the socket and takes the data, the owner
/// reads it, the ACK goes out.
fn segment_in(c: &mut Criterion) {
    let mut g = c.benchmark_group("stack_segment_in");
    g.throughput(Throughput::Bytes(1420));
    for n in [1usize, 100, 2000] {
        let mut t = Instant::now();
        let (mut st, flows) = with_flows(n, t);
        // The flow in the middle of the socket set (smoltcp scans it in order).
        let f = &flows[n / 2];
        let h = f.handle;
        let mut seg = common::tcp_segment(
            f.remote,
            SERVICE,
            f.peer_seq,
            f.own_seq,
            TCP_ACK | PSH,
            &[],
            common::MSS,
        );
        assert_eq!(seg.len(), 1420);
        let mut seq = f.peer_seq;
        let mut chunk = vec![0u8; 64 * 1024];
        let (mut sent, mut got, mut acks) = (0usize, 0usize, 0usize);
        g.bench_function(BenchmarkId::new("flows", n), |b| {
            b.iter(|| {
                common::set_seq(&mut seg, seq);
                seq = seq.wrapping_add(common::MSS as u32);
                t += TICK;
                let r = st.input(black_box(&seg));
                debug_assert_eq!(r, Input::Queued);
                st.poll(t);
                got += st.tcp_recv(h, &mut chunk);
                acks += drain(&mut st);
                sent += common::MSS;
            })
        });
        // (nothing ran if a filter skipped this case)
        assert_eq!(got, sent, "every segment taken in order ({n} flows)");
        assert!(sent == 0 || acks > 0, "ACKs went out");
    }
    g.finish();
}

/// As [`segment_in`], but 32 segments of the flow go in before one poll (the
/// owner task takes a batch of datagrams per wake-up): the per-poll walk over
/// all sockets is shared by the batch.
fn segment_in_batch(c: &mut Criterion) {
    const B: usize = 32;
    let mut g = c.benchmark_group("stack_segment_in_x32");
    g.throughput(Throughput::Bytes(1420 * B as u64));
    for n in [1usize, 100, 2000] {
        let mut t = Instant::now();
        let (mut st, flows) = with_flows(n, t);
        let f = &flows[n / 2];
        let h = f.handle;
        let mut seg = common::tcp_segment(
            f.remote,
            SERVICE,
            f.peer_seq,
            f.own_seq,
            TCP_ACK | PSH,
            &[],
            common::MSS,
        );
        let mut seq = f.peer_seq;
        let mut chunk = vec![0u8; 64 * 1024];
        let (mut sent, mut got) = (0usize, 0usize);
        g.bench_function(BenchmarkId::new("flows", n), |b| {
            b.iter(|| {
                for _ in 0..B {
                    common::set_seq(&mut seg, seq);
                    seq = seq.wrapping_add(common::MSS as u32);
                    let r = st.input(black_box(&seg));
                    debug_assert_eq!(r, Input::Queued);
                }
                t += TICK;
                st.poll(t);
                while st.tcp(h).can_recv() {
                    got += st.tcp_recv(h, &mut chunk);
                }
                drain(&mut st);
                sent += B * common::MSS;
            })
        });
        assert_eq!(got, sent, "every segment taken in order ({n} flows)");
    }
    g.finish();
}

/// The fixed cost of one owner wake-up with nothing to do: `poll` and
/// `poll_at` walk every socket.
fn idle_poll(c: &mut Criterion) {
    let mut g = c.benchmark_group("stack_idle_poll");
    g.throughput(Throughput::Elements(1));
    for n in [1usize, 100, 2000] {
        let mut t = Instant::now();
        let (mut st, _flows) = with_flows(n, t);
        g.bench_function(BenchmarkId::new("flows", n), |b| {
            b.iter(|| {
                t += TICK;
                st.poll(t);
                black_box(st.poll_at(t))
            })
        });
        assert_eq!(st.output_len(), 0, "idle flows sent nothing");
    }
    g.finish();
}

/// Download direction: the owner queues 1380 bytes on one flow, smoltcp
/// emits one 1420-byte segment, the owner takes it; the peer's ACK for every
/// second segment goes in.
fn segment_out(c: &mut Criterion) {
    let mut g = c.benchmark_group("stack_segment_out");
    g.throughput(Throughput::Bytes(1420));
    let mut t = Instant::now();
    let (mut st, flows) = with_flows(1, t);
    let f = &flows[0];
    let h = f.handle;
    let data = vec![0x5au8; common::MSS];
    let mut ack = common::tcp_segment(f.remote, SERVICE, f.peer_seq, f.own_seq, TCP_ACK, &[], 0);
    let mut next = f.own_seq;
    let (mut queued, mut out, mut i) = (0usize, 0usize, 0u64);
    g.bench_function("flows/1", |b| {
        b.iter(|| {
            t += TICK;
            queued += st.tcp_send(h, black_box(&data));
            st.poll(t);
            while let Some(p) = st.pop_output() {
                let len = common::tcp_payload_len(&p);
                next = common::seq_of(&p).wrapping_add(len as u32);
                out += len;
                st.recycle(p);
            }
            i += 1;
            if i % 2 == 0 {
                common::set_ack(&mut ack, next);
                let _ = black_box(st.input(&ack));
            }
        })
    });
    g.finish();
    // Everything queued went out, except at most one send buffer still in flight.
    assert!(out + 512 * 1024 >= queued, "out {out} queued {queued}");
    assert!(queued == 0 || out > 0, "segments went out");
}

/// A new flow: SYN in (flow table lookup and insert, a listening socket with
/// its buffers), smoltcp answers, the SYN-ACK goes out. Flows are removed
/// again untimed every 256 SYNs.
fn new_flow(c: &mut Criterion) {
    let mut g = c.benchmark_group("stack_new_flow");
    g.throughput(Throughput::Elements(1));
    const CHUNK: usize = 256;
    for existing in [1usize, 1000] {
        let mut t = Instant::now();
        let (mut st, _flows) = with_flows(existing, t);
        let syns: Vec<Vec<u8>> = (0..CHUNK)
            .map(|i| {
                common::tcp_segment(
                    SocketAddrV4::new(PEER_IP, 30000 + i as u16),
                    SERVICE,
                    PEER_ISN,
                    0,
                    TCP_SYN,
                    &common::syn_options(common::MSS as u16),
                    0,
                )
            })
            .collect();
        let mut handles = Vec::with_capacity(CHUNK);
        g.bench_function(BenchmarkId::new("existing", existing), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                let mut done = 0u64;
                while done < iters {
                    let n = (iters - done).min(CHUNK as u64) as usize;
                    let start = Instant::now();
                    for syn in &syns[..n] {
                        if let Input::NewTcp { handle, .. } = st.input(black_box(syn)) {
                            handles.push(handle);
                        }
                        t += TICK;
                        st.poll(t);
                        drain(&mut st);
                    }
                    total += start.elapsed();
                    assert_eq!(handles.len(), n, "every SYN made a flow");
                    for h in handles.drain(..) {
                        assert_eq!(st.tcp(h).state(), TcpState::SynReceived);
                        st.tcp_remove(h);
                    }
                    done += n as u64;
                }
                total
            })
        });
        assert_eq!(st.tcp_flows(), existing);
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = common::config();
    targets = segment_in, segment_in_batch, idle_poll, segment_out, new_flow
}
criterion_main!(benches);
