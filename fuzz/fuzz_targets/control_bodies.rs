//! Control API bodies: revocation JSON and RFC 7009 / back-channel forms. Any bytes give a
//! revocation or a refusal, never a panic; an accepted revocation is well-formed.
#![no_main]

use std::sync::OnceLock;

use jwtgate::config::{AccessConfig, ControlConfig};
use jwtgate::control::writes::{parse_batch, parse_revocation};
use jwtgate::control::idp::form;
use libfuzzer_sys::fuzz_target;

fn access() -> &'static AccessConfig {
    static ACCESS: OnceLock<AccessConfig> = OnceLock::new();
    ACCESS.get_or_init(|| {
        ControlConfig::from_yaml(
            "listen: \"127.0.0.1:0\"\nstore: \"sqlite://x.db\"\n",
            std::path::Path::new("/"),
            &|_| None,
        )
        .expect("config")
        .access
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = parse_revocation(data, access(), 1_700_000_000) {
        assert!(!r.iss.is_empty() && r.iss.len() <= 1024);
        assert!(!r.value.is_empty() && r.value.len() <= 1024);
        assert!(r.reason.as_ref().is_none_or(|x| x.len() <= 1024));
    }
    if let Ok(batch) = parse_batch(data, access(), 1_700_000_000) {
        assert!(!batch.is_empty() && batch.len() <= 10_000);
        for r in &batch {
            assert!(!r.iss.is_empty() && r.iss.len() <= 1024);
            assert!(!r.value.is_empty() && r.value.len() <= 1024);
            assert!(!r.value.chars().any(char::is_control));
        }
    }
    if let Ok(fields) = form(data) {
        let mut names: Vec<&str> = fields.iter().map(|(k, _)| k.as_str()).collect();
        names.sort_unstable();
        let before = names.len();
        names.dedup();
        assert_eq!(before, names.len(), "a repeated field got through");
    }
});
