#![no_main]
//! See `edgesync_proto::fuzzing::session`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| edgesync_proto::fuzzing::session(data));
