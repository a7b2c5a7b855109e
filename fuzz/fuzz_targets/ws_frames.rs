//! The WebSocket frame tracker: boundaries found in a stream do not depend on how it is
//! split into reads, and nothing panics on any frame header.
#![no_main]

use jwtgate::live::Frames;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let at = usize::from(split).min(rest.len());
    let mut whole = Frames::default();
    let all = whole.feed(rest);
    let mut parts = Frames::default();
    let mut split_boundaries = parts.feed(&rest[..at]);
    split_boundaries.extend(parts.feed(&rest[at..]).into_iter().map(|b| b + at));
    assert_eq!(all, split_boundaries);
    assert_eq!(whole.at_boundary(), parts.at_boundary());
});
