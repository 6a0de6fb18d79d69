//! The PROXY v2 header reader on arbitrary bytes: no panic, no read past a header it
//! accepts, and a LOCAL or PROXY verdict only for input that starts with the v2 signature.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mailsilo_smtp::proxy::{self, SIGNATURE};

fuzz_target!(|data: &[u8]| {
    if let Ok(Ok((_, used))) = proxy::parse(data) {
        assert!(data.starts_with(&SIGNATURE));
        assert!(used <= data.len() && used <= proxy::MAX_HEADER);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut input = data;
        if proxy::read(&mut input, std::time::Duration::from_secs(1))
            .await
            .is_ok()
        {
            assert!(data.starts_with(&SIGNATURE));
        }
    });
});
