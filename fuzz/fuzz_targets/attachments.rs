//! Type detection and archive inspection on arbitrary bytes, under tight limits: no panic,
//! no file past the limits, and the first byte chooses a name (so name checks and the
//! name-dependent script detection run too). Seed with zips, gzips, tars, PDFs and OLE files.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mailsilo_malware::{Limits, inspect};

const NAMES: [&str; 6] = [
    "a.zip",
    "invoice.pdf.exe",
    "x.js",
    "notes.txt",
    "r\u{202e}fdp.exe",
    "",
];

fuzz_target!(|data: &[u8]| {
    let Some((&first, data)) = data.split_first() else {
        return;
    };
    let limits = Limits {
        depth: 3,
        files: 50,
        expanded: 1 << 20,
        ratio: 100,
    };
    let files = inspect(NAMES[first as usize % NAMES.len()], data, &limits, None);
    assert!(files.len() <= limits.files + 1);
    assert!(files.iter().all(|f| f.depth <= limits.depth));
});
