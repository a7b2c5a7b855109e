//! Configuration loading: any text gives a valid config or a list of problems — never a
//! panic, a stack overflow or unbounded memory.
#![no_main]

use jwtgate::config::{Config, ControlConfig};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let env = |name: &str| (name == "SECRET").then(|| "s3cret-value".to_owned());
    let base = std::path::Path::new("/nonexistent");
    if let Err(problems) = Config::from_yaml(text, base, &env) {
        assert!(!problems.is_empty());
        // (Unless the file itself spells the value out: then it is the file's own text.)
        if !text.contains("s3cret-value") {
            for p in &problems {
                assert!(
                    !p.message.contains("s3cret-value"),
                    "a secret in a message: {p}"
                );
            }
        }
    }
    let _ = ControlConfig::from_yaml(text, base, &env);
});
