//! The revocation stream's event parser: any bytes, split anywhere, give the same events as
//! the whole, and never a panic.
#![no_main]

use jwtgate::revocation::sync::EventParser;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let at = usize::from(split).min(rest.len());
    let mut whole = EventParser::default();
    let all = whole.feed(rest);
    let mut parts = EventParser::default();
    let first = parts.feed(&rest[..at]);
    let second = parts.feed(&rest[at..]);
    if let (Ok(all), Ok(mut first), Ok(second)) = (all, first, second) {
        first.extend(second);
        assert_eq!(all, first);
    }
});
