//! Test notes: what this machine lacked and what a test left out for it
//! (only DCCP on kernels without its tracker may be left out; everything
//! else a test needs makes it fail). `integration/test-all` prints the file
//! after cargo's summary.

/// The notes file, emptied by `integration/test-all` before the run.
pub fn notes_path() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-notes.txt")
}

/// Append one line to the test notes.
pub fn note_for_summary(line: &str) {
    use std::io::Write;
    let path = notes_path();
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
    {
        let _ = writeln!(f, "{line}");
    }
}
