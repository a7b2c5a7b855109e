//! Path normalization and Host parsing: no panic; a normalized path normalizes to itself and
//! holds no `//`, `/./`, `/../` or encoded unreserved character; a parsed host renders to a
//! value that parses to the same host.
#![no_main]

use jwtgate::path::{normalize_path, parse_authority};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = normalize_path(data) {
        let again = normalize_path(p.as_bytes()).expect("a normalized path is valid");
        assert_eq!(again, p, "normalization is idempotent");
        assert!(p.starts_with('/'));
        for bad in ["//", "/./", "/../"] {
            assert!(!p.contains(bad), "{p:?} holds {bad}");
        }
        assert!(!p.ends_with("/.") && !p.ends_with("/.."), "{p:?}");
        let lower = p.to_ascii_lowercase();
        for unreserved in ["%2e", "%41", "%7e", "%5f", "%2d"] {
            assert!(!lower.contains(unreserved), "{p:?} keeps {unreserved}");
        }
    }
    if let Some(a) = parse_authority(data) {
        let rendered = a.render();
        let again = parse_authority(rendered.as_bytes()).expect("a canonical host parses");
        assert_eq!(again, a);
        assert!(!rendered.contains(['@', '/', '?', '#', ' ', '%', '\\']));
    }
});
