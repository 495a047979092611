#![no_main]
//! See `edgesync_proto::fuzzing::snapshot`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| edgesync_proto::fuzzing::snapshot(data));
