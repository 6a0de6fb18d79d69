//! Recipient address checks that keep the gateway from ever being an open relay.
//!
//! The command parser has already dropped a source route (`<@a,@b:user@x>` is `user@x`,
//! which RFC 5321 says to accept and ignore) and checked the syntax, keeping the address as
//! the client wrote it. What remains is checked here, on the local part with its quoting
//! removed: the relay tricks that older MTAs honoured (`user%other@ours`, `other!user@ours`,
//! `"user@other"@ours`) are refused outright, since the client's own server might honour
//! them, and the domain must be a plain host name. Quoting itself is no trick:
//! `"a b"@ours` and `"alice"@ours` are ordinary addresses, relayed exactly as written.

use crate::Reply;
use crate::command::Mailbox;

/// A recipient as the policy sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipient {
    /// The address exactly as received, quoting included: stored and relayed as it is.
    pub raw: String,
    /// The local part without its quoting.
    pub local: String,
    /// The domain in lower case.
    pub domain: String,
}

/// Checks a recipient mailbox from `RCPT TO:<...>`.
pub fn recipient(mailbox: &Mailbox, smtputf8: bool) -> Result<Recipient, Reply> {
    let relay = || Reply::new(550, "5.7.1 Relay access denied");
    if !smtputf8 && !mailbox.raw.is_ascii() {
        return Err(Reply::new(553, "5.6.7 Non-ASCII address requires SMTPUTF8"));
    }
    // A non-ASCII character standing in for an ASCII one (the Kelvin sign for 'k') would be
    // one address to this policy and another to the next hop: refused.
    if mailbox
        .raw
        .chars()
        .any(|c| !c.is_ascii() && c.to_lowercase().all(|l| l.is_ascii()))
    {
        return Err(Reply::new(
            553,
            "5.1.3 Address with a character that stands in for an ASCII one",
        ));
    }
    let local = &mailbox.local;
    if local.is_empty() || local.len() > 64 {
        return Err(Reply::new(501, "5.1.3 Bad recipient address syntax"));
    }
    // Routing characters in the local part: percent hack, bang path, an embedded address.
    if local.contains(['%', '!', '@']) {
        return Err(relay());
    }
    let domain = mailbox.domain.to_lowercase();
    if !config::is_host_name(&domain) {
        // Address literals, trailing dots, empty labels: never one of ours.
        return Err(relay());
    }
    Ok(Recipient {
        raw: mailbox.raw.clone(),
        local: local.clone(),
        domain,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{Command, ForwardPath, RcptTo, parse};

    fn check(address: &str, smtputf8: bool) -> Result<Recipient, Reply> {
        match parse(format!("RCPT TO:<{address}>\r\n").as_bytes()) {
            Ok(Command::Rcpt(RcptTo {
                path: ForwardPath::Mailbox(m),
                ..
            })) => recipient(&m, smtputf8),
            Ok(other) => panic!("{other:?}"),
            Err(r) => Err(r.reply),
        }
    }

    #[test]
    fn relay_tricks_are_refused() {
        for a in [
            "user%other.net@example.com",
            "other.net!user@example.com",
            "\"user@other.net\"@example.com",
            "\"user%other.net\"@example.com",
            "user@example.com.",
            "user@[127.0.0.1]",
            "user@-example.com",
        ] {
            assert_eq!(check(a, true).unwrap_err().code, 550, "{a}");
        }
        assert_eq!(check("user@example..com", true).unwrap_err().code, 501);
        assert_eq!(check("nodomain", true).unwrap_err().code, 501);
        assert_eq!(check("@example.com", true).unwrap_err().code, 501);
    }

    #[test]
    fn quoting_is_kept_and_is_no_trick() {
        for (a, local) in [
            ("\"a b\"@example.com", "a b"),
            ("\"a\\\"b\"@example.com", "a\"b"),
            ("\"alice\"@example.com", "alice"),
        ] {
            let r = check(a, false).unwrap();
            assert_eq!((r.raw.as_str(), r.local.as_str()), (a, local));
        }
    }

    proptest::proptest! {
        /// Whatever the parser makes of a RCPT line, an address these checks accept is a
        /// local part without routing characters at a plain host name.
        #[test]
        fn accepted_addresses_carry_no_routing(raw in "[a-zA-Z0-9@%!:.,\"\\\\\\[\\] <>-]{0,40}") {
            if let Ok(r) = check(&raw, false) {
                proptest::prop_assert!(!r.local.is_empty());
                proptest::prop_assert!(!r.local.contains(['%', '!', '@']), "{:?}", r);
                proptest::prop_assert!(!r.domain.is_empty() && !r.domain.ends_with('.'));
                proptest::prop_assert!(r.domain.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.'), "{:?}", r);
                let suffix = format!("@{}", r.domain);
                proptest::prop_assert!(r.raw.to_lowercase().ends_with(&suffix), "{:?}", r);
            }
        }
    }

    #[test]
    fn good_addresses() {
        let r = check("Alice@Example.COM", false).unwrap();
        assert_eq!(
            (r.local.as_str(), r.domain.as_str(), r.raw.as_str()),
            ("Alice", "example.com", "Alice@Example.COM")
        );
        assert_eq!(check("jörg@example.com", false).unwrap_err().code, 553);
        assert_eq!(
            check("jörg@bücher.example", true).unwrap().domain,
            "bücher.example"
        );
    }
}
