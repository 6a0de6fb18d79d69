//! The SMTP command parser on arbitrary lines: no panics; an accepted address is a substring
//! of the line (kept as written, never rewritten); a BDAT is either a plain decimal size or
//! a refusal that closes the session.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mailsilo_smtp::command::{Command, ForwardPath, parse};

fuzz_target!(|data: &[u8]| {
    // The session hands the parser one line: up to and including the first LF.
    let line = match data.iter().position(|&b| b == b'\n') {
        Some(i) => &data[..=i],
        None => data,
    };
    let text = String::from_utf8_lossy(line);
    match parse(line) {
        Ok(Command::Rcpt(r)) => {
            if let ForwardPath::Mailbox(m) = r.path {
                assert!(text.contains(&m.raw));
            }
            if let Some(o) = r.orcpt {
                assert!(text.contains(&o));
            }
        }
        Ok(Command::Mail(m)) => {
            if let Some(s) = m.sender {
                assert!(text.contains(&s.raw));
            }
        }
        Ok(Command::Bdat { size, .. }) => {
            let digits: String = text
                .chars()
                .skip(4)
                .filter(|c| c.is_ascii_digit())
                .collect();
            assert_eq!(digits.parse::<u64>().unwrap_or(u64::MAX), size);
        }
        Ok(_) => {}
        Err(r) => {
            // The verb: up to the first space or the line end.
            let body = line.strip_suffix(b"\n").unwrap_or(line);
            let body = body.strip_suffix(b"\r").unwrap_or(body);
            let verb = body.split(|&b| b == b' ').next().unwrap_or_default();
            if verb.eq_ignore_ascii_case(b"BDAT") {
                assert!(r.close, "a refused BDAT closes the session");
            }
        }
    }
});
