//! Recipient address checks that keep the gateway from ever being an open relay.
//!
//! smtp-proto has already removed a source route (`<@a,@b:user@x>` is `user@x`, which
//! RFC 5321 says to accept and ignore) and the quotes of a quoted local part. What remains
//! is checked here: the relay tricks that older MTAs honoured (`user%other@ours`,
//! `other!user@ours`, `"user@other"@ours`) are refused outright, since the client's own
//! server might honour them, and the domain must be a plain host name.

use crate::Reply;

/// A recipient split into its parts, the domain in lower case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipient {
    pub local: String,
    pub domain: String,
}

/// Checks a recipient address as parsed from `RCPT TO:<...>`.
pub fn recipient(address: &str, smtputf8: bool) -> Result<Recipient, Reply> {
    let relay = || Reply::new(550, "5.7.1 Relay access denied");
    if !smtputf8 && !address.is_ascii() {
        return Err(Reply::new(553, "5.6.7 Non-ASCII address requires SMTPUTF8"));
    }
    let Some((local, domain)) = address.rsplit_once('@') else {
        return Err(Reply::new(501, "5.1.3 Bad recipient address syntax"));
    };
    if local.is_empty() || local.len() > 64 {
        return Err(Reply::new(501, "5.1.3 Bad recipient address syntax"));
    }
    // Routing characters in the local part: percent hack, bang path, an embedded address.
    if local.contains(['%', '!', '@', ':', '"', '\\']) {
        return Err(relay());
    }
    let domain = domain.to_lowercase();
    let plain_host = !domain.is_empty()
        && domain.len() <= 253
        && domain.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && label.chars().all(|c| c.is_alphanumeric() || c == '-')
        });
    if !plain_host {
        // Address literals, trailing dots, empty labels: never one of ours.
        return Err(relay());
    }
    Ok(Recipient {
        local: local.to_string(),
        domain,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_tricks_are_refused() {
        for a in [
            "user%other.net@example.com",
            "other.net!user@example.com",
            "user@other.net@example.com",
            "user@example.com.",
            "user@[127.0.0.1]",
            "user@example..com",
            "user@-example.com",
            "a\"b@example.com",
        ] {
            assert_eq!(recipient(a, true).unwrap_err().code, 550, "{a}");
        }
        assert_eq!(recipient("nodomain", true).unwrap_err().code, 501);
        assert_eq!(recipient("@example.com", true).unwrap_err().code, 501);
    }

    proptest::proptest! {
        /// Whatever smtp-proto makes of a RCPT line, an address these checks accept is a
        /// plain local part at a plain host name: no routing left in it.
        #[test]
        fn accepted_addresses_carry_no_routing(raw in "[a-zA-Z0-9@%!:.,\"\\\\\\[\\] <>-]{0,40}") {
            let line = format!("RCPT TO:<{raw}>\r\n");
            if let Ok(smtp_proto::Request::Rcpt { to }) = smtp_proto::Request::parse(&mut line.as_bytes().iter())
                && let Ok(r) = recipient(&to.address, false)
            {
                proptest::prop_assert!(!r.local.is_empty());
                proptest::prop_assert!(!r.local.contains(['%', '!', '@', ':', '"', '\\']), "{:?}", r);
                proptest::prop_assert!(!r.domain.is_empty() && !r.domain.ends_with('.'));
                proptest::prop_assert!(r.domain.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.'), "{:?}", r);
            }
        }
    }

    #[test]
    fn good_addresses() {
        assert_eq!(
            recipient("Alice@Example.COM", false).unwrap(),
            Recipient {
                local: "Alice".into(),
                domain: "example.com".into()
            }
        );
        assert_eq!(recipient("jörg@example.com", false).unwrap_err().code, 553);
        assert_eq!(
            recipient("jörg@bücher.example", true).unwrap().domain,
            "bücher.example"
        );
    }
}
