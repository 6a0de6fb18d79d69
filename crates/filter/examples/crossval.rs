//! Five-fold cross-validation of the whole engine (rules, phishing checks and the
//! classifier) on the SpamAssassin corpus's first sets, the only data the filter's
//! constants were tuned on. `bench/detection.sh` runs it before the held-out test:
//!
//! ```text
//! cargo run --release -p mailsilo-filter --example crossval -- CORPUS_DATA_DIR
//! ```
//!
//! It prints spam recall and false positives (easy ham and hard ham apart) at the default
//! spam threshold, and how they move if the classifier's score were shifted.

use mailsilo_filter::classifier::{Judgement, Model, features};
use mailsilo_filter::content::Content;
use mailsilo_filter::engine::classifier_score;
use mailsilo_filter::rules::Rules;
use mailsilo_filter::training::strip_from_line;
use mailsilo_filter::{Engine, Envelope};

const FOLDS: usize = 5;

fn load(dir: &std::path::Path, set: &str) -> Vec<Vec<u8>> {
    let mut names: Vec<_> = std::fs::read_dir(dir.join(set))
        .unwrap_or_else(|e| panic!("{}: {e}", dir.join(set).display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "txt"))
        .collect();
    names.sort();
    names
        .iter()
        .map(|p| strip_from_line(&std::fs::read(p).unwrap()).to_vec())
        .collect()
}

fn main() {
    let dir = std::path::PathBuf::from(
        std::env::args()
            .nth(1)
            .expect("usage: crossval CORPUS_DATA_DIR (holding spam-1, easy-ham-1, hard-ham-1)"),
    );
    let spam = load(&dir, "spam-1");
    let easy = load(&dir, "easy-ham-1");
    let hard = load(&dir, "hard-ham-1");
    let ham: Vec<&Vec<u8>> = easy.iter().chain(&hard).collect();
    let engine = Engine::new(Rules::new(true, &[]).unwrap());
    // The rules' and phishing checks' part of each score (the engine has no model here).
    let rules = |raw: &[u8]| engine.scan(raw, &Envelope::default(), &[]).score;
    let spam_rules: Vec<f64> = spam.iter().map(|r| rules(r)).collect();
    let ham_rules: Vec<f64> = ham.iter().map(|r| rules(r)).collect();
    let spam_features: Vec<Vec<u32>> = spam.iter().map(|r| features(&Content::parse(r))).collect();
    let ham_features: Vec<Vec<u32>> = ham.iter().map(|r| features(&Content::parse(r))).collect();

    let mut spam_scores = vec![0.0; spam.len()];
    let mut ham_scores = vec![0.0; ham.len()];
    for fold in 0..FOLDS {
        let training: Vec<(bool, &[u32])> = spam_features
            .iter()
            .enumerate()
            .filter(|(i, _)| i % FOLDS != fold)
            .map(|(_, f)| (true, f.as_slice()))
            .chain(
                ham_features
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| i % FOLDS != fold)
                    .map(|(_, f)| (false, f.as_slice())),
            )
            .collect();
        let model = Model::train(&training);
        let score = |f: &[u32]| match model.judge(f) {
            Judgement::Probability(p) => classifier_score(p, model.spam, model.ham),
            Judgement::Untrained => 0.0,
        };
        for i in (fold..spam.len()).step_by(FOLDS) {
            spam_scores[i] = spam_rules[i] + score(&spam_features[i]);
        }
        for i in (fold..ham.len()).step_by(FOLDS) {
            ham_scores[i] = ham_rules[i] + score(&ham_features[i]);
        }
    }
    let threshold = config::FilterPolicy::default().spam_threshold;
    println!(
        "5-fold cross-validation on spam-1 ({}), easy-ham-1 ({}), hard-ham-1 ({}):",
        spam.len(),
        easy.len(),
        hard.len()
    );
    for shift in [-2.0, -1.0, 0.0, 1.0, 2.0] {
        let t = threshold + shift;
        let caught = spam_scores.iter().filter(|s| **s >= t).count();
        let easy_fp = ham_scores[..easy.len()].iter().filter(|s| **s >= t).count();
        let hard_fp = ham_scores[easy.len()..].iter().filter(|s| **s >= t).count();
        println!(
            "  threshold {t:>4.1}{}: spam recall {:.2} %, false positives {easy_fp}/{} easy ham ({:.2} %), {hard_fp}/{} hard ham",
            if shift == 0.0 {
                " (default)"
            } else {
                "          "
            },
            100.0 * caught as f64 / spam.len() as f64,
            easy.len(),
            100.0 * easy_fp as f64 / easy.len() as f64,
            hard.len()
        );
    }
}
