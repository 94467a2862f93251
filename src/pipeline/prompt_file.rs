//! `--prompt-file`: one prompt per line, or one JSON object per line with per-prompt settings
//! (`{"prompt": "...", "seed": 3, "width": 768, "height": 512, "steps": 20, "negative_prompt": "..."}`).
//! Empty lines and lines starting with `#` (comments) are skipped; a UTF-8 byte order mark (Notepad and
//! PowerShell write one) is dropped. Prompt i (0-based, counting prompts, not lines) is seeded
//! `--seed + i` unless its line sets a seed.

use std::path::Path;

use serde::Deserialize;

use crate::{Error, Result};

/// One line of a prompt file; unset fields take the command line's values.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromptJob {
    pub prompt: String,
    pub negative_prompt: Option<String>,
    pub seed: Option<u64>,
    pub width: Option<usize>,
    pub height: Option<usize>,
    pub steps: Option<usize>,
    /// The line of the file it was read from (1-based; 0 for a prompt not read from a file).
    #[serde(skip)]
    pub line: usize,
}

/// The prompts of `path`, in order; a line that does not parse is one sentence naming the file and line.
pub fn read(path: &Path) -> Result<Vec<PromptJob>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, "cannot read the prompt file", e))?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let mut jobs = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let number = i + 1;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let job = if line.starts_with('{') {
            let job = serde_json::from_str::<PromptJob>(line)
                .map_err(|e| Error::parse_file(path, &format!("line {number}: not a prompt object"), e))?;
            for (field, value) in [("width", job.width), ("height", job.height), ("steps", job.steps)] {
                if value == Some(0) {
                    return Err(Error::bad_file(path, format!("line {number}: `{field}` must be positive")));
                }
            }
            PromptJob { line: number, ..job }
        } else if line.starts_with('[') {
            return Err(Error::bad_file(
                path,
                format!("line {number}: a JSON array; expected one JSON object (or plain prompt text) per line"),
            ));
        } else {
            PromptJob { prompt: line.to_string(), line: number, ..Default::default() }
        };
        jobs.push(job);
    }
    if jobs.is_empty() {
        return Err(Error::bad_file(path, "holds no prompt (one per line, or JSON objects with a `prompt`)"));
    }
    Ok(jobs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_json_lines() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("p.txt");
        std::fs::write(&path, "# prompts\na red fox\n\n{\"prompt\": \"a cat\", \"seed\": 3, \"width\": 96}\n").unwrap();
        let jobs = read(&path).unwrap();
        assert_eq!(jobs[0], PromptJob { prompt: "a red fox".into(), line: 2, ..Default::default() });
        assert_eq!((jobs[1].prompt.as_str(), jobs[1].seed, jobs[1].width), ("a cat", Some(3), Some(96)));
        assert_eq!(jobs[1].line, 4);
        std::fs::write(&path, "ok\n{\"prompt\": \"x\", \"sed\": 1}\n").unwrap();
        let err = read(&path).unwrap_err().to_string();
        assert!(err.contains("line 2: not a prompt object") && err.contains("unknown field `sed`"), "{err}");
        std::fs::write(&path, "# nothing\n").unwrap();
        assert!(read(&path).unwrap_err().to_string().contains("holds no prompt"));
    }

    /// Notepad and PowerShell start a UTF-8 file with a byte order mark; the first line is still JSON.
    #[test]
    fn a_byte_order_mark_is_dropped() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("p.txt");
        std::fs::write(&path, "\u{feff}{\"prompt\": \"a cat\", \"seed\": 3, \"width\": 96}\nx\n").unwrap();
        let jobs = read(&path).unwrap();
        assert_eq!(
            (jobs[0].prompt.as_str(), jobs[0].seed, jobs[0].width, jobs[0].line),
            ("a cat", Some(3), Some(96), 1)
        );
    }

    #[test]
    fn a_json_array_line_is_an_error_naming_the_line() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("p.txt");
        std::fs::write(&path, "a fox\n\n[{\"prompt\": \"a cat\"}]\n").unwrap();
        let err = read(&path).unwrap_err().to_string();
        assert!(err.contains("p.txt") && err.contains("line 3: a JSON array"), "{err}");
        std::fs::write(&path, "{\"prompt\": \"a cat\", \"steps\": 0}\n").unwrap();
        let err = read(&path).unwrap_err().to_string();
        assert!(err.contains("line 1: `steps` must be positive"), "{err}");
    }
}
