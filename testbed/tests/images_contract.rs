//! The carrier image carries exactly the command names `proto` promises (the CLI refuses to
//! bridge a container whose command the image cannot start), in both image recipes.
use std::collections::BTreeSet;

fn words_after(text: &str, start: &str, end: &str) -> BTreeSet<String> {
    let from = text
        .find(start)
        .unwrap_or_else(|| panic!("{start:?} not found"))
        + start.len();
    let rest = &text[from..];
    let to = rest
        .find(end)
        .unwrap_or_else(|| panic!("{end:?} not found after {start:?}"));
    rest[..to]
        .split_whitespace()
        .map(|w| w.trim_end_matches('\\').to_string())
        .filter(|w| !w.is_empty())
        .collect()
}

#[test]
fn carrier_names_match_proto() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let proto: BTreeSet<String> = proto::CARRIER_COMMAND_NAMES
        .iter()
        .map(|s| s.to_string())
        .collect();
    let script = std::fs::read_to_string(root.join("images/build.sh")).unwrap();
    assert_eq!(
        words_after(&script, "CARRIER_NAMES=\"", "\""),
        proto,
        "images/build.sh CARRIER_NAMES"
    );
    let dirs = words_after(&script, "CARRIER_DIRS=\"", "\"");
    let proto_dirs: BTreeSet<String> = proto::CARRIER_COMMAND_DIRS
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(dirs, proto_dirs, "images/build.sh CARRIER_DIRS");
    let dockerfile = std::fs::read_to_string(root.join("images/Dockerfile.carrier")).unwrap();
    assert_eq!(
        words_after(&dockerfile, "for n in ", "; do"),
        proto,
        "images/Dockerfile.carrier names"
    );
}
