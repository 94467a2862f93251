//! `--prompt-file`: one prompt per line, or one JSON object per line with per-prompt settings
//! (`{"prompt": "...", "seed": 3, "width": 768, "height": 512, "steps": 20, "negative_prompt": "..."}`).
//! Empty lines and lines starting with `#` are skipped.

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
}

/// The prompts of `path`, in order; a line that does not parse is one sentence naming the file and line.
pub fn read(path: &Path) -> Result<Vec<PromptJob>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, "cannot read the prompt file", e))?;
    let mut jobs = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let job = if line.starts_with('{') {
            serde_json::from_str::<PromptJob>(line)
                .map_err(|e| Error::parse_file(path, &format!("line {}: not a prompt object", i + 1), e))?
        } else {
            PromptJob { prompt: line.to_string(), ..Default::default() }
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
        assert_eq!(jobs[0], PromptJob { prompt: "a red fox".into(), ..Default::default() });
        assert_eq!((jobs[1].prompt.as_str(), jobs[1].seed, jobs[1].width), ("a cat", Some(3), Some(96)));
        std::fs::write(&path, "ok\n{\"prompt\": \"x\", \"sed\": 1}\n").unwrap();
        let err = read(&path).unwrap_err().to_string();
        assert!(err.contains("line 2: not a prompt object") && err.contains("unknown field `sed`"), "{err}");
        std::fs::write(&path, "# nothing\n").unwrap();
        assert!(read(&path).unwrap_err().to_string().contains("holds no prompt"));
    }
}
