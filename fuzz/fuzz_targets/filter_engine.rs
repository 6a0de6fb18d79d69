//! The whole scanning engine (MIME view, rules, classifier features and judgement,
//! phishing checks, the headers added to a delivered copy) on arbitrary bytes: no panic,
//! finite scores, and a delivered copy that still ends with the message's own body. The
//! same bytes as a From: field's value give only addresses (DMARC's authors).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use mailsilo_filter::classifier::{Model, features};
use mailsilo_filter::content::Content;
use mailsilo_filter::intake::with_scan_headers;
use mailsilo_filter::network::author_addresses;
use mailsilo_filter::rules::Rules;
use mailsilo_filter::{Engine, Envelope, decide};

fn engine() -> &'static Engine {
    static E: OnceLock<Engine> = OnceLock::new();
    E.get_or_init(|| {
        let engine = Engine::new(Rules::new(true, &[]).unwrap());
        // A model that judges (60 of each class), so the classifier path runs too.
        let spam = features(&Content::parse(b"Subject: cheap pills\r\n\r\nbuy now"));
        let ham = features(&Content::parse(b"Subject: minutes\r\n\r\nthe agenda"));
        let mut examples: Vec<(bool, &[u32])> = Vec::new();
        for _ in 0..60 {
            examples.push((true, &spam));
            examples.push((false, &ham));
        }
        engine.set_model(1, Model::train(&examples));
        engine
    })
}

fuzz_target!(|data: &[u8]| {
    let env = Envelope {
        client: Some([192, 0, 2, 1].into()),
        helo: "client.example",
        sender: "a@b.example",
    };
    let report = engine().scan(data, &env, &["example.com".to_string()]);
    assert!(report.score.is_finite());
    let d = decide(&report, &mailsilo_config::FilterPolicy::default(), &env);
    let copy = with_scan_headers(
        bytes::Bytes::copy_from_slice(data),
        &report,
        &d,
        true,
        Some("mx.test"),
    );
    let header_end = data
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(data.len(), |i| i + 2);
    assert!(copy.ends_with(&data[header_end..]));
    for author in author_addresses(data) {
        let (local, domain) = author.rsplit_once('@').expect("an address");
        assert!(!local.is_empty() && !domain.is_empty(), "{author:?}");
    }
});
