#![no_main]
//! See `edgesync_proto::fuzzing::decode`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| edgesync_proto::fuzzing::decode(data));
