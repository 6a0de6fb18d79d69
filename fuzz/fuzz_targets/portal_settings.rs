//! What the portal takes to change a client domain, on arbitrary bytes: the domain page's
//! form (URL-encoded, turned into settings over a domain's current ones) and the API's JSON
//! settings, each then checked by the configuration's rules. No panic; settings the rules
//! accept are stored as the rules give them back, and those give the same domain again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mailsilo_config::{Config, Domain, DomainSettings};
use mailsilo_portal::policy::DomainForm;

static CONFIG: std::sync::LazyLock<Config> = std::sync::LazyLock::new(Config::demo);

fuzz_target!(|data: &[u8]| {
    let config = &*CONFIG;
    let check = |s: &DomainSettings| {
        Domain::from_settings(
            "example.com",
            s,
            config.retry,
            &config.filter.policy,
            &config.silos,
        )
    };
    let mut candidates = Vec::new();
    if let Ok(form) = serde_urlencoded::from_bytes::<DomainForm>(data) {
        let current = config.domains[0].settings();
        if let Ok(s) = form.apply(&current) {
            candidates.push(s);
        }
    }
    if let Ok(s) = serde_json::from_slice::<DomainSettings>(data) {
        candidates.push(s);
    }
    for s in candidates {
        if let Ok(domain) = check(&s) {
            let stored = domain.settings();
            let again = check(&stored).expect("settings the rules gave back pass them");
            assert_eq!(again.settings(), stored);
        }
    }
});
