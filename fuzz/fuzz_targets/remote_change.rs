#![no_main]
//! See `edgesync_proto::fuzzing::remote_change`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| edgesync_proto::fuzzing::remote_change(data));
