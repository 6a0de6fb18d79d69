//! Scored regular expressions over header fields, the text and the link hosts: the starter
//! set the product ships (documented in `docs/filter.md`) and the operator's own from the
//! config's `[[filter.rule]]` tables, which replace a starter rule of the same name.
//!
//! The patterns are compiled once, with a bounded program size, by the `regex` crate,
//! whose matching time is linear in the input: no pattern, however written, can make a
//! crafted message slow.

use config::{Rule, RuleTarget};
use regex::{Regex, RegexBuilder};

use crate::content::Content;

/// The GTUBE string: a message that holds it is spam, whatever else it says.
pub const GTUBE: &str = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X";

/// The starter rules: name, target, pattern, score, reason.
const STARTER: &[(&str, Target, &str, f64, &str)] = &[
    (
        "GTUBE",
        Target::Body,
        r"XJS\*C4JDBQADN1\.NSBN3\*2IDNEN\*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL\*C\.34X",
        1000.0,
        "the GTUBE test string (always spam)",
    ),
    (
        "SUBJ_ALL_CAPS",
        Target::Header("subject"),
        r"^[^a-z]*[A-Z]{3,}[^a-z]*[A-Z]{3,}[^a-z]*$",
        0.5,
        "the subject is written in capitals",
    ),
    (
        "SUBJ_MONEY",
        Target::Header("subject"),
        r"(?i)(\$\s?\d{2,}|\b(free money|cash prize|you('ve| have) won|winner)\b)",
        1.0,
        "the subject promises money",
    ),
    (
        "BODY_LOTTERY",
        Target::Body,
        r"(?i)\b(lottery|sweepstake|jackpot) (winner|prize|award)|\byou have (been selected|won)\b",
        1.5,
        "the text announces a prize",
    ),
    (
        "BODY_ADVANCE_FEE",
        Target::Body,
        r"(?i)\b(next of kin|transfer of (the )?(sum|funds?)|(million|m) (united states |us )?dollars|beneficiary of)\b",
        1.5,
        "the text reads like an advance-fee fraud",
    ),
    (
        "BODY_GUARANTEE",
        Target::Body,
        r"(?i)\b(100% (free|guaranteed|satisfaction)|risk[- ]free|no (credit )?check(s)? required)\b",
        1.0,
        "the text makes sales guarantees",
    ),
    (
        "BODY_REMOVE_ME",
        Target::Body,
        r"(?i)\b(click here to (be )?(removed|unsubscribe)|to be removed from (our|this) (mailing )?list)\b",
        0.5,
        "the text offers removal from a list the reader did not join",
    ),
    (
        "BODY_PHARMACY",
        Target::Body,
        r"(?i)\b(viagra|cialis|levitra|xanax|valium|phentermine)\b",
        1.5,
        "the text names drugs sold by spam",
    ),
    (
        "URL_NUMERIC_IP",
        Target::Url,
        r"^\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}$",
        1.5,
        "a link goes to a bare IP address",
    ),
    (
        "URL_SHORTENER",
        Target::Url,
        r"^(bit\.ly|tinyurl\.com|goo\.gl|t\.co|ow\.ly|is\.gd|buff\.ly|rebrand\.ly)$",
        0.5,
        "a link hides its destination behind a shortener",
    ),
];

#[derive(Clone, Copy)]
enum Target {
    Header(&'static str),
    Body,
    Url,
}

/// A compiled rule.
#[derive(Debug)]
pub struct Compiled {
    pub name: String,
    target: RuleTarget,
    regex: Regex,
    pub score: f64,
    pub reason: String,
}

/// The rules in force, compiled.
#[derive(Debug, Default)]
pub struct Rules {
    rules: Vec<Compiled>,
}

/// The limit on a compiled pattern's program.
const SIZE_LIMIT: usize = 1 << 20;

impl Rules {
    /// The starter set (unless `starter` is false) and the config's rules, which replace
    /// a starter rule of the same name. The config checked every pattern already; one that
    /// does not compile here is an error naming the rule.
    pub fn new(starter: bool, own: &[Rule]) -> Result<Rules, String> {
        let mut all: Vec<Rule> = Vec::new();
        if starter {
            for (name, target, pattern, score, reason) in STARTER {
                all.push(Rule {
                    name: name.to_string(),
                    target: match target {
                        Target::Header(h) => RuleTarget::Header(h.to_string()),
                        Target::Body => RuleTarget::Body,
                        Target::Url => RuleTarget::Url,
                    },
                    pattern: pattern.to_string(),
                    score: *score,
                    reason: reason.to_string(),
                });
            }
        }
        for r in own {
            all.retain(|o| o.name != r.name);
            all.push(r.clone());
        }
        let rules = all
            .into_iter()
            .map(|r| {
                let regex = RegexBuilder::new(&r.pattern)
                    .size_limit(SIZE_LIMIT)
                    .build()
                    .map_err(|e| format!("rule {}: {e}", r.name))?;
                Ok(Compiled {
                    name: r.name,
                    target: r.target,
                    regex,
                    score: r.score,
                    reason: r.reason,
                })
            })
            .collect::<Result<_, String>>()?;
        Ok(Rules { rules })
    }

    /// The rules that match `c`.
    pub fn matches<'a>(&'a self, c: &'a Content) -> impl Iterator<Item = &'a Compiled> + 'a {
        self.rules.iter().filter(move |r| match &r.target {
            RuleTarget::Header(h) if h == "subject" => r.regex.is_match(&c.subject),
            RuleTarget::Header(h) => c.headers.iter().any(|(n, v)| n == h && r.regex.is_match(v)),
            RuleTarget::Body => r.regex.is_match(&c.text),
            RuleTarget::Url => c.links.iter().any(|l| r.regex.is_match(&l.host)),
        })
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(rules: &Rules, raw: &str) -> Vec<String> {
        let c = Content::parse(raw.as_bytes());
        rules.matches(&c).map(|r| r.name.clone()).collect()
    }

    #[test]
    fn the_starter_set_compiles_and_finds_gtube() {
        let rules = Rules::new(true, &[]).unwrap();
        assert_eq!(rules.len(), STARTER.len());
        let gtube = format!("Subject: test\r\n\r\nhello {GTUBE} there\r\n");
        assert_eq!(names(&rules, &gtube), ["GTUBE"]);
        assert!(names(&rules, "Subject: Lunch?\r\n\r\nsee you at noon\r\n").is_empty());
        let spammy =
            "Subject: YOU HAVE WON $5000\r\n\r\nClick http://192.0.2.7/x for 100% free viagra\r\n";
        let found = names(&rules, spammy);
        for want in [
            "SUBJ_ALL_CAPS",
            "SUBJ_MONEY",
            "BODY_GUARANTEE",
            "BODY_PHARMACY",
            "URL_NUMERIC_IP",
        ] {
            assert!(found.iter().any(|n| n == want), "{want} not in {found:?}");
        }
    }

    #[test]
    fn config_rules_add_to_and_replace_the_starter_set() {
        let own = [
            Rule {
                name: "BODY_PHARMACY".into(),
                target: RuleTarget::Body,
                pattern: "(?i)aspirin".into(),
                score: 0.1,
                reason: "mild".into(),
            },
            Rule {
                name: "LIST_HEADER".into(),
                target: RuleTarget::Header("x-list".into()),
                pattern: "^promo".into(),
                score: 2.0,
                reason: "promo list".into(),
            },
        ];
        let rules = Rules::new(true, &own).unwrap();
        assert_eq!(rules.len(), STARTER.len() + 1);
        assert!(names(&rules, "Subject: a\r\n\r\nbuy viagra\r\n").is_empty());
        assert_eq!(
            names(&rules, "Subject: a\r\nX-List: promo-1\r\n\r\naspirin\r\n"),
            ["BODY_PHARMACY", "LIST_HEADER"]
        );
        assert!(Rules::new(false, &own).unwrap().len() == 2);
    }
}
