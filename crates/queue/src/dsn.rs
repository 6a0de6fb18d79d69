//! Delivery status notifications (RFC 3464 multipart/report) for failed and delayed mail.

use smtp::command::decode_xtext;
use smtp::date;
use store::{Message, Ret};

/// Why one recipient is being reported.
pub struct Report<'a> {
    pub recipient: &'a str,
    /// ORCPT as received (`addr-type;xtext`).
    pub orcpt: Option<&'a str>,
    pub reason: &'a str,
}

/// Failed for good, or still being retried.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Action {
    Failed,
    Delayed { retry_until: i64 },
}

/// The enhanced status code a reason carries (`550 5.1.1 ...` gives `5.1.1`), with its class
/// set to match the action; `X.4.7` (delivery time expired) when it carries none.
fn status(reason: &str, class: char) -> String {
    let found = reason.split_whitespace().take(4).find(|w| {
        let parts: Vec<&str> = w.split('.').collect();
        parts.len() == 3
            && parts
                .iter()
                .all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()))
    });
    match found {
        Some(code) => format!("{class}{}", &code[1..]),
        None => format!("{class}.4.7"),
    }
}

/// Builds the DSN message (CRLF line ends) for `original`.
pub fn build(
    hostname: &str,
    id: &str,
    now: i64,
    original: &Message,
    action: Action,
    reports: &[Report<'_>],
) -> Vec<u8> {
    let boundary = format!("{id}/{hostname}");
    let (subject, intro, word, class) = match action {
        Action::Failed => (
            "Undelivered Mail Returned to Sender",
            "I'm sorry to have to inform you that your message could not\r\nbe delivered to one or more recipients.",
            "failed",
            '5',
        ),
        Action::Delayed { .. } => (
            "Delayed Mail (still being retried)",
            "Your message could not be delivered yet to one or more recipients.\r\nIt is still being retried; you do not need to send it again.",
            "delayed",
            '4',
        ),
    };
    let mut m = String::new();
    m.push_str(&format!(
        "From: Mail Delivery System <MAILER-DAEMON@{hostname}>\r\nTo: <{}>\r\nSubject: {subject}\r\nDate: {}\r\nMessage-ID: <{id}@{hostname}>\r\nAuto-Submitted: auto-replied\r\nMIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"{boundary}\"\r\n\r\n",
        original.sender,
        date::rfc5322(now)
    ));
    m.push_str(&format!(
        "This is a MIME-encapsulated message.\r\n\r\n--{boundary}\r\nContent-Description: Notification\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nThis is the mail system at host {hostname}.\r\n\r\n{intro}\r\n\r\n"
    ));
    for r in reports {
        m.push_str(&format!("<{}>: {}\r\n", r.recipient, r.reason));
    }
    m.push_str(&format!(
        "\r\n--{boundary}\r\nContent-Description: Delivery report\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; {hostname}\r\nX-Mailsilo-Queue-ID: {}\r\n",
        original.id
    ));
    if let Some(envid) = &original.envid {
        m.push_str(&format!(
            "Original-Envelope-Id: {}\r\n",
            header_safe(&decode_xtext(envid))
        ));
    }
    m.push_str(&format!(
        "Arrival-Date: {}\r\n",
        date::rfc5322(original.received_at)
    ));
    for r in reports {
        m.push_str(&format!("\r\nFinal-Recipient: rfc822; {}\r\n", r.recipient));
        if let Some(o) = r.orcpt {
            m.push_str(&format!(
                "Original-Recipient: {}\r\n",
                original_recipient(o)
            ));
        }
        m.push_str(&format!(
            "Action: {word}\r\nStatus: {}\r\n",
            status(r.reason, class)
        ));
        let diagnostic = r.reason.replace(['\r', '\n'], " ");
        if diagnostic
            .as_bytes()
            .first()
            .is_some_and(u8::is_ascii_digit)
        {
            m.push_str(&format!("Diagnostic-Code: smtp; {diagnostic}\r\n"));
        } else {
            m.push_str(&format!("X-Mailsilo-Diagnostic: {diagnostic}\r\n"));
        }
        if let Action::Delayed { retry_until } = action {
            m.push_str(&format!(
                "Will-Retry-Until: {}\r\n",
                date::rfc5322(retry_until)
            ));
        }
    }
    let mut out = m.into_bytes();
    // Without RET the whole message goes back, as Postfix does.
    let headers_only =
        original.ret == Some(Ret::Headers) || matches!(action, Action::Delayed { .. });
    let (kind, content) = if headers_only {
        let end = find(&original.body, b"\r\n\r\n").map_or(original.body.len(), |i| i + 2);
        ("text/rfc822-headers", &original.body[..end])
    } else {
        ("message/rfc822", &original.body[..])
    };
    out.extend_from_slice(format!("\r\n--{boundary}\r\nContent-Description: Undelivered Message\r\nContent-Type: {kind}\r\n\r\n").as_bytes());
    out.extend_from_slice(content);
    if !content.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    out
}

/// The Original-Recipient field's value (RFC 3464 section 2.3.1): the ORCPT's address type
/// and its address, decoded from xtext (the `utf-8` type of RFC 6533 is kept as it came).
fn original_recipient(orcpt: &str) -> String {
    match orcpt.split_once(';') {
        Some((kind, addr)) if !kind.eq_ignore_ascii_case("utf-8") => {
            format!("{kind};{}", header_safe(&decode_xtext(addr)))
        }
        _ => header_safe(orcpt),
    }
}

/// A decoded value made safe for one header line.
fn header_safe(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes() {
        assert_eq!(status("550 5.1.1 No such user", '5'), "5.1.1");
        assert_eq!(status("451 4.3.0 Try later", '5'), "5.3.0");
        assert_eq!(status("connect to 127.0.0.1:25: refused", '5'), "5.4.7");
        assert_eq!(status("452 too many", '4'), "4.4.7");
    }

    #[test]
    fn report_shape() {
        let original = Message {
            id: "Q1".into(),
            sender: "bob@example.org".into(),
            envid: Some("E+2B1".into()),
            ret: Some(Ret::Headers),
            received_at: 0,
            body: b"Subject: hi\r\n\r\nsecret body\r\n".to_vec().into(),
            recipients: vec![],
        };
        let r = [Report {
            recipient: "a@example.com",
            orcpt: Some("rfc822;a+2Bx@example.com"),
            reason: "550 5.1.1 unknown",
        }];
        let text =
            String::from_utf8(build("mx.test", "D1", 0, &original, Action::Failed, &r)).unwrap();
        for needle in [
            "To: <bob@example.org>",
            "Content-Type: multipart/report; report-type=delivery-status;",
            "Original-Envelope-Id: E+1",
            "Final-Recipient: rfc822; a@example.com",
            "Original-Recipient: rfc822;a+x@example.com",
            "Action: failed",
            "Status: 5.1.1",
            "Diagnostic-Code: smtp; 550 5.1.1 unknown",
            "Content-Type: text/rfc822-headers",
            "Subject: hi",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }
        assert!(
            !text.contains("secret body"),
            "RET=HDRS returns headers only"
        );
        assert!(text.ends_with("--D1/mx.test--\r\n"));
    }
}
