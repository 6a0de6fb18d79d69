//! The malware and attachment checks: every attachment (and every file inside its
//! archives) inspected by the malware layer with no daemon (kind by content, lying names,
//! archive limits, EICAR, the SHA-256 block list), then each attachment streamed to clamd
//! when one is configured. Findings become symbols like any other check's, plus what the
//! policy needs: the files seen (for the attachment rules of each recipient domain), the
//! virus found, and whether clamd failed to answer (for the domain's fail mode).
//!
//! [`rules`] matches a domain's attachment rules against the files seen; [`strip`] removes
//! attachments from a message, putting a note where each was.

use std::time::Instant;

use config::{AttachmentAction, FilterPolicy};
use malware::{Blocklist, Clamd, Flag, Kind, Limits};
use tracing::{info, warn};

use crate::content::Attachment;
use crate::engine::{Report, Symbol};

/// A file seen in an attachment, as the policy reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct FileSeen {
    /// `invoice.zip/inner.zip/a.exe`.
    pub path: String,
    /// Its kind's name.
    pub kind: &'static str,
    /// The last extension of its name, lower-case.
    pub extension: String,
    /// Its policy flags' names (`encrypted-archive`, `lying-name`, ...).
    pub flags: Vec<&'static str>,
    /// The top-level part removing it removes (none: the whole message).
    pub range: Option<(usize, usize)>,
}

/// The condition of a message whose MIME view left parts unread.
pub const MIME_LIMIT: &str = "mime-limit";

/// An attachment to remove, and the note left in its place.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Strip {
    pub range: (usize, usize),
    pub note: String,
}

/// The malware checks' settings, shared by every scan.
pub struct Malware {
    limits: Limits,
    blocklist: Option<Blocklist>,
    clamd: Option<(Clamd, usize)>,
}

impl Malware {
    /// The checks as configured: archive limits, the block list (read now), and clamd.
    pub fn new(f: &config::Filter) -> Result<Malware, String> {
        let blocklist = match &f.hash_blocklist {
            None => None,
            Some(p) => Some(Blocklist::load(p).map_err(|e| {
                format!("filter.hash_blocklist: {} cannot be read: {e}", p.display())
            })?),
        };
        let clamd = f.clamd.as_ref().map(|c| {
            let address = match &c.address {
                config::ClamdAddress::Tcp(a) => malware::Address::Tcp(*a),
                config::ClamdAddress::Unix(p) => malware::Address::Unix(p.clone()),
            };
            (Clamd::new(address, c.timeout, c.connections), c.max_size)
        });
        Ok(Malware {
            limits: Limits {
                depth: f.archives.max_depth,
                files: f.archives.max_files,
                expanded: f.archives.max_expanded as u64,
                ratio: u64::from(f.archives.max_ratio),
            },
            blocklist,
            clamd,
        })
    }

    /// The clamd client, when one is configured.
    pub fn clamd(&self) -> Option<&Clamd> {
        self.clamd.as_ref().map(|c| &c.0)
    }

    /// The built-in checks on every attachment, with one budget for the whole message.
    /// `parts_skipped`: the MIME view left parts unread, so attachments may be unseen (a
    /// `mime-limit` the policy can act on).
    pub fn inspect(&self, attachments: &[Attachment], parts_skipped: bool, r: &mut Report) {
        let t = Instant::now();
        if let Some(list) = &self.blocklist {
            match list.refresh() {
                Ok(Some(n)) => info!(hashes = n, "hash block list read again"),
                Ok(None) => {}
                Err(e) => {
                    warn!(error = %e, "the hash block list cannot be read; the old one stays")
                }
            }
        }
        let mut symbols: Vec<(&'static str, f64, String, usize)> = Vec::new();
        let mut note = |name: &'static str, score: f64, why: String| match symbols
            .iter_mut()
            .find(|s| s.0 == name)
        {
            Some(s) => s.3 += 1,
            None => symbols.push((name, score, why, 0)),
        };
        let mut inspector = malware::Inspector::new(&self.limits, self.blocklist.as_ref());
        for a in attachments {
            let mut files = inspector.inspect(&a.name, &a.data);
            // A part that gives its file two names is judged under each, and its names lie:
            // which one a mail client shows is the client's choice.
            for alias in &a.aliases {
                files.extend(inspector.inspect(alias, &a.data));
            }
            if let (Some(first), false) = (files.first_mut(), a.aliases.is_empty()) {
                first.flags.push((
                    Flag::NameLies,
                    format!("the part names its file {:?} and {:?}", a.name, a.aliases),
                ));
            }
            for file in files {
                if let Some((name, score)) = kind_symbol(file.kind) {
                    note(name, score, format!("{}: {}", file.path, file.why));
                }
                for (flag, why) in &file.flags {
                    let (name, score) = flag_symbol(*flag);
                    note(name, score, format!("{}: {why}", file.path));
                    if matches!(flag, Flag::Eicar | Flag::Listed) && r.virus.is_none() {
                        r.virus = Some(format!("{} is {why}", file.path));
                    }
                }
                r.files.push(FileSeen {
                    kind: file.kind.as_str(),
                    extension: file.extension,
                    flags: file
                        .flags
                        .iter()
                        .map(|(f, _)| f.as_str())
                        .filter(|f| malware::POLICY_FLAGS.iter().any(|(_, n)| n == f))
                        .collect(),
                    range: a.range,
                    path: file.path,
                });
            }
        }
        if parts_skipped {
            // The message itself, as a file the policy can hold: what was not read may be
            // an attachment. (MIME_LIMITS says which limit.)
            r.files.push(FileSeen {
                path: "(the message)".into(),
                kind: "other",
                extension: String::new(),
                flags: vec![MIME_LIMIT],
                range: None,
            });
        }
        let micros = t.elapsed().as_micros() as u64;
        for (name, score, reason, more) in symbols {
            r.add(Symbol {
                name: name.into(),
                score,
                reason: if more > 0 {
                    format!("{reason} (and {more} more)")
                } else {
                    reason
                },
                micros,
            });
        }
    }

    /// Each attachment streamed to clamd (none once a virus is known), all of them within
    /// `filter.clamd.timeout`. An attachment past `filter.clamd.max_size`, or one clamd
    /// answers it cannot scan, is unscanned and says so; no answer at all marks the report
    /// `antivirus_failed` for the fail mode.
    pub async fn antivirus(&self, attachments: &[Attachment], r: &mut Report) {
        let Some((clamd, max_size)) = &self.clamd else {
            return;
        };
        let t = Instant::now();
        let deadline = tokio::time::Instant::now() + clamd.timeout();
        let unscanned = |r: &mut Report, why: String| {
            r.add(Symbol {
                name: "CLAMD_SKIPPED".into(),
                score: 0.0,
                reason: why,
                micros: t.elapsed().as_micros() as u64,
            })
        };
        for a in attachments {
            if r.virus.is_some() {
                return;
            }
            if a.data.len() > *max_size {
                unscanned(
                    r,
                    format!(
                        "{} ({} bytes) is larger than filter.clamd.max_size",
                        a.name,
                        a.data.len()
                    ),
                );
                continue;
            }
            let scan = match tokio::time::timeout_at(deadline, clamd.scan(&a.data)).await {
                Ok(s) => s,
                Err(_) => Err(malware::ClamdError::Timeout(
                    clamd.address().clone(),
                    clamd.timeout(),
                )),
            };
            match scan {
                Ok(malware::Scan::Clean) => {}
                Ok(malware::Scan::Unscanned(why)) => {
                    warn!(attachment = %a.name, answer = %why, "clamd could not scan an attachment");
                    unscanned(r, format!("clamd could not scan {}: {why}", a.name));
                }
                Ok(malware::Scan::Found(signature)) => {
                    r.virus = Some(format!("{} carries {signature}", a.name));
                    r.add(Symbol {
                        name: "CLAMD_VIRUS".into(),
                        score: 0.0,
                        reason: format!("clamd found {signature} in {}", a.name),
                        micros: t.elapsed().as_micros() as u64,
                    });
                }
                Err(e) => {
                    warn!(error = %e, "antivirus scan failed");
                    r.antivirus_failed = true;
                    r.add(Symbol {
                        name: "CLAMD_TEMPERROR".into(),
                        score: 0.0,
                        reason: e.to_string(),
                        micros: t.elapsed().as_micros() as u64,
                    });
                    return;
                }
            }
        }
    }
}

/// How often clamd's health is checked between scans.
pub const PING_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// Asks clamd for its health every [`PING_INTERVAL`] until shutdown, logging each change,
/// so `/metrics` shows a clamd that went down even when no mail comes; each answer is also
/// counted into the store's hourly statistics (metric `clamd_health`, labelled `NODE up`
/// or `NODE down`, no client domain: operators' figures), so the portal charts every
/// node's clamd over time.
pub async fn watch_clamd(
    engine: std::sync::Arc<crate::Engine>,
    store: std::sync::Arc<dyn store::Store>,
    node: String,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let Some(clamd) = engine.malware().and_then(Malware::clamd) else {
        return;
    };
    let tally = store::Tally::default();
    let mut was = true;
    loop {
        let up = clamd.ping().await;
        if up != was {
            if up {
                info!(address = %clamd.address(), "clamd answers again");
            } else {
                warn!(address = %clamd.address(), "clamd does not answer");
            }
            was = up;
        }
        let state = if up { "up" } else { "down" };
        tally.add(
            smtp::date::now(),
            "",
            "clamd_health",
            &format!("{node} {state}"),
        );
        if let Err(e) = tally.flush(store.as_ref()).await {
            warn!(error = %e, "clamd health samples not written; kept for the next");
        }
        tokio::select! {
            _ = tokio::time::sleep(PING_INTERVAL) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}

/// The symbols of kinds worth naming. Scores are small: the attachment rules act on what
/// an attachment is; the score only adds it to the evidence that a message is spam.
fn kind_symbol(kind: Kind) -> Option<(&'static str, f64)> {
    Some(match kind {
        Kind::Executable => ("ATTACH_EXECUTABLE", 1.0),
        Kind::Script => ("ATTACH_SCRIPT", 1.0),
        Kind::Shortcut => ("ATTACH_SHORTCUT", 1.0),
        Kind::DiskImage => ("ATTACH_DISK_IMAGE", 1.0),
        Kind::MacroDocument => ("ATTACH_MACRO", 1.0),
        Kind::ActivePdf => ("ATTACH_PDF_ACTIVE", 0.5),
        Kind::ActiveHtml => ("ATTACH_HTML_ACTIVE", 1.0),
        _ => return None,
    })
}

fn flag_symbol(flag: Flag) -> (&'static str, f64) {
    match flag {
        Flag::Encrypted => ("ARCHIVE_ENCRYPTED", 0.5),
        Flag::Limit => ("ARCHIVE_LIMIT", 0.5),
        Flag::Corrupt => ("ARCHIVE_CORRUPT", 0.5),
        Flag::Uninspected => ("ARCHIVE_UNINSPECTED", 0.0),
        Flag::NameLies => ("ATTACH_NAME_LIES", 2.0),
        Flag::Eicar => ("EICAR_TEST", 0.0),
        Flag::Listed => ("HASH_BLOCKLISTED", 0.0),
    }
}

/// What a domain's attachment rules make of the files seen: the strongest action of every
/// rule that matches a file not on the allow list, why, and (for strip) what to remove.
/// A strip that would remove the whole message is a quarantine.
pub fn rules(
    files: &[FileSeen],
    policy: &FilterPolicy,
) -> Option<(AttachmentAction, String, Vec<Strip>)> {
    let mut worst: Option<(AttachmentAction, String)> = None;
    let mut strips: Vec<Strip> = Vec::new();
    for f in files {
        let terms = || std::iter::once(f.kind).chain(f.flags.iter().copied());
        // An allowed extension does not cover a file whose name lies about its content.
        let lies = f.flags.contains(&"lying-name");
        let allowed = policy
            .attachment_allow
            .iter()
            .any(|a| (*a == f.extension && !lies) || terms().any(|t| t == a));
        if allowed {
            continue;
        }
        for rule in &policy.attachment_rules {
            let hit = terms()
                .find(|t| rule.types.iter().any(|r| r == t))
                .map(str::to_string)
                .or_else(|| {
                    rule.extensions
                        .contains(&f.extension)
                        .then(|| format!(".{}", f.extension))
                });
            let Some(what) = hit else { continue };
            let mut action = rule.action;
            let why = format!("attachment {} is {what}", f.path);
            if action == AttachmentAction::Strip {
                match f.range {
                    Some(range) => match strips.iter_mut().find(|s| s.range == range) {
                        Some(s) => s.note = format!("{}; {}", s.note, why),
                        None => strips.push(Strip {
                            range,
                            note: why.clone(),
                        }),
                    },
                    None => action = AttachmentAction::Quarantine,
                }
            }
            if worst.as_ref().is_none_or(|(a, _)| action > *a) {
                worst = Some((action, why));
            }
        }
    }
    worst.map(|(a, why)| (a, why, strips))
}

/// `raw` with each stripped part's bytes replaced by a short text part saying what was
/// removed and why; the rest of the message is left byte for byte.
pub fn strip(raw: &[u8], strips: &[Strip]) -> Vec<u8> {
    let mut sorted: Vec<&Strip> = strips.iter().collect();
    sorted.sort_by_key(|s| s.range);
    let mut out = Vec::with_capacity(raw.len());
    let mut at = 0;
    for s in sorted {
        let (start, end) = (s.range.0.max(at), s.range.1.min(raw.len()));
        if start >= end {
            continue;
        }
        out.extend_from_slice(&raw[at..start]);
        let note = format!(
            "mailsilo removed an attachment from this message: {}.",
            s.note.replace(['\r', '\n'], " ")
        );
        out.extend_from_slice(
            b"Content-Type: text/plain; charset=utf-8\r\nContent-Disposition: inline\r\nContent-Transfer-Encoding: 8bit\r\n\r\n",
        );
        out.extend_from_slice(wrap(&note).as_bytes());
        at = end;
    }
    out.extend_from_slice(&raw[at..]);
    out
}

/// `text` in lines of at most 76 characters (SMTP's 998-octet limit is never near, whatever
/// a file name holds), each ended by CRLF, the lines after the first indented by two
/// spaces so that no line of it can start a MIME boundary (`--...`).
fn wrap(text: &str) -> String {
    let mut out = String::new();
    let mut line = 0;
    for word in text.split(' ').filter(|w| !w.is_empty()) {
        let mut rest = word;
        while !rest.is_empty() {
            if line > 2 && line + 1 + rest.chars().count().min(74) > 76 {
                out.push_str("\r\n  ");
                line = 2;
            }
            if line > 2 || (line > 0 && !out.ends_with("\r\n  ")) {
                out.push(' ');
                line += 1;
            }
            let cut = rest.char_indices().nth(74).map_or(rest.len(), |(i, _)| i);
            out.push_str(&rest[..cut]);
            line += rest[..cut].chars().count();
            rest = &rest[cut..];
        }
    }
    out.push_str("\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::content::Content;

    const MESSAGE: &str = "From: a@example.net\r\nTo: b@example.com\r\nSubject: files\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"XX\"\r\n\r\n--XX\r\nContent-Type: text/plain\r\n\r\nSee attached.\r\n--XX\r\nContent-Type: application/octet-stream; name=\"tool.exe\"\r\nContent-Disposition: attachment; filename=\"tool.exe\"\r\nContent-Transfer-Encoding: base64\r\n\r\nTVqQAAMAAAAEAAAA//8AALgAAAAAAAAAQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAgAAAAA==\r\n--XX\r\nContent-Type: text/plain; name=\"notes.txt\"\r\nContent-Disposition: attachment; filename=\"notes.txt\"\r\n\r\nkeep me\r\n--XX--\r\n";

    #[test]
    fn a_stripped_part_leaves_a_note_and_the_rest_intact() {
        let c = Content::parse(MESSAGE.as_bytes());
        assert_eq!(c.attachments.len(), 2, "{:?}", c.attachments);
        let exe = &c.attachments[0];
        assert_eq!(exe.name, "tool.exe");
        assert!(exe.data.starts_with(b"MZ"));
        let strips = vec![Strip {
            range: exe.range.unwrap(),
            note: "attachment tool.exe is executable".into(),
        }];
        let out = String::from_utf8(strip(MESSAGE.as_bytes(), &strips)).unwrap();
        assert!(!out.contains("TVqQ"), "{out}");
        assert!(out.split_whitespace().collect::<Vec<_>>().join(" ").contains(
            "mailsilo removed an attachment from this message: attachment tool.exe is executable."
        ));
        let again = Content::parse(out.as_bytes());
        let names: Vec<_> = again.attachments.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["notes.txt"], "{out}");
        assert!(again.text.contains("See attached."));
        assert!(again.text.contains("keep me"));
        assert!(out.ends_with("--XX--\r\n"));
        assert!(out.lines().all(|l| l.len() <= 80), "{out}");
    }

    #[test]
    fn long_notes_are_wrapped() {
        let w = wrap(&format!(
            "removed {} for a reason --boundary",
            "x".repeat(200)
        ));
        assert!(w.split("\r\n").all(|l| l.chars().count() <= 76), "{w}");
        assert!(
            w.split("\r\n")
                .skip(1)
                .all(|l| l.is_empty() || l.starts_with("  ")),
            "{w}"
        );
        let letters = |t: &str| t.chars().filter(|c| !c.is_whitespace()).collect::<String>();
        assert_eq!(
            letters(&w),
            format!("removed{}forareason--boundary", "x".repeat(200))
        );
    }

    #[test]
    fn the_config_knows_every_kind_and_flag_by_name() {
        let ours: std::collections::BTreeSet<&str> = malware::KINDS
            .iter()
            .map(|k| k.as_str())
            .chain(malware::POLICY_FLAGS.iter().map(|(_, n)| *n))
            .chain([MIME_LIMIT])
            .collect();
        let config: std::collections::BTreeSet<&str> =
            config::ATTACHMENT_TYPES.iter().copied().collect();
        assert_eq!(ours, config);
    }

    #[test]
    fn the_strongest_rule_wins_and_the_allow_list_exempts() {
        let file = |kind, ext: &str, flags: Vec<&'static str>| FileSeen {
            path: format!("f.{ext}"),
            kind,
            extension: ext.into(),
            flags,
            range: Some((10, 20)),
        };
        let mut p = FilterPolicy::default();
        let files = [
            file("macro-document", "docm", vec![]),
            file("executable", "pdf", vec!["lying-name"]),
        ];
        let (a, why, _) = rules(&files, &p).unwrap();
        assert_eq!(a, AttachmentAction::Reject);
        assert!(why.contains("f.pdf is executable"), "{why}");
        // An allowed extension does not cover a name that lies; allowed types do.
        p.attachment_allow = vec!["pdf".into()];
        assert_eq!(rules(&files, &p).unwrap().0, AttachmentAction::Reject);
        p.attachment_allow = vec!["executable".into(), "lying-name".into()];
        assert_eq!(rules(&files, &p).unwrap().0, AttachmentAction::Quarantine);
        p.attachment_rules = vec![config::AttachmentRule {
            types: vec!["macro-document".into()],
            extensions: vec![],
            action: AttachmentAction::Strip,
        }];
        let (a, _, strips) = rules(&files, &p).unwrap();
        assert_eq!(a, AttachmentAction::Strip);
        assert_eq!(strips.len(), 1);
        assert!(rules(&[file("image", "png", vec![])], &p).is_none());
        // Nothing to strip but the whole message: held instead.
        let mut whole = file("macro-document", "docm", vec![]);
        whole.range = None;
        assert_eq!(rules(&[whole], &p).unwrap().0, AttachmentAction::Quarantine);
    }
}
