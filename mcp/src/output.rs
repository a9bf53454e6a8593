//! A job's output as this server gathers it (from events, or from reads by offset) and as
//! a model reads it: text, each stream's head and tail kept within a budget.

use base64::Engine as _;
use serde_json::{json, Value};

/// What a model is shown of one stream at most, in bytes: the first half and the last
/// half, the middle cut with a line saying how much. (The daemon's own cap, per policy,
/// applies before this; a model's context is the tighter bound.)
pub const TEXT_BUDGET: usize = 32 * 1024;

/// The output gathered so far, both streams.
#[derive(Default)]
pub struct Gathered {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Gathered {
    fn stream(&mut self, name: &str) -> Option<&mut Vec<u8>> {
        match name {
            "stdout" => Some(&mut self.stdout),
            "stderr" => Some(&mut self.stderr),
            _ => None,
        }
    }

    /// Take one event of a streamed job; returns the bytes it carried, if it was output.
    pub fn take_event(&mut self, event: &Value) -> Option<(String, Vec<u8>)> {
        let kind = event["type"].as_str().unwrap_or("");
        match kind {
            "stdout" | "stderr" => {
                let bytes = payload(event);
                self.stream(kind)?.extend_from_slice(&bytes);
                Some((kind.to_string(), bytes))
            }
            "truncated" => {
                let stream = event["stream"].as_str().unwrap_or("");
                let marker = format!(
                    "\n[toolbox: {} bytes of {stream} dropped here by the job's output limit; the last {} bytes follow]\n",
                    event["dropped_bytes"].as_u64().unwrap_or(0),
                    event["kept_bytes"].as_u64().unwrap_or(0)
                );
                self.stream(stream)?.extend_from_slice(marker.as_bytes());
                Some((stream.to_string(), marker.into_bytes()))
            }
            _ => None,
        }
    }

    /// Take one stream's part of a `GET …/output` answer (`{since, next, chunks}`).
    pub fn take_chunks(&mut self, name: &str, part: &Value) {
        let Some(buffer) = self.stream(name) else {
            return;
        };
        for chunk in part["chunks"].as_array().into_iter().flatten() {
            if let Some(dropped) = chunk["dropped_bytes"].as_u64() {
                buffer.extend_from_slice(
                    format!("\n[toolbox: {dropped} bytes of {name} dropped here by the job's output limit]\n")
                        .as_bytes(),
                );
            } else {
                buffer.extend_from_slice(&payload(chunk));
            }
        }
    }

    /// The two streams as text for a model, each within [`TEXT_BUDGET`].
    pub fn text(&self) -> String {
        let mut text = clip(&self.stdout, TEXT_BUDGET);
        if !self.stderr.is_empty() {
            if !text.is_empty() && !text.ends_with('\n') {
                text.push('\n');
            }
            text.push_str("[stderr]\n");
            text.push_str(&clip(&self.stderr, TEXT_BUDGET));
        }
        text
    }

    /// The two streams as structured content: text (lossy where not UTF-8), as shown.
    pub fn structured(&self) -> Value {
        json!({
            "stdout": clip(&self.stdout, TEXT_BUDGET),
            "stderr": clip(&self.stderr, TEXT_BUDGET),
        })
    }
}

/// The bytes of an output event or chunk (`text` or `base64`).
fn payload(value: &Value) -> Vec<u8> {
    if let Some(text) = value["text"].as_str() {
        text.as_bytes().to_vec()
    } else if let Some(encoded) = value["base64"].as_str() {
        base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .unwrap_or_default()
    } else {
        Vec::new()
    }
}

/// `bytes` as text, at most `budget` bytes of it: the head and the tail, the middle cut and
/// counted. Bytes that are not UTF-8 are shown as U+FFFD.
pub fn clip(bytes: &[u8], budget: usize) -> String {
    if bytes.len() <= budget {
        return String::from_utf8_lossy(bytes).into_owned();
    }
    let half = budget / 2;
    // Cut between characters: back over UTF-8 continuation bytes at either cut.
    let continuation = |b: u8| b & 0xC0 == 0x80;
    let mut head_end = half;
    while head_end > 0 && continuation(bytes[head_end]) {
        head_end -= 1;
    }
    let mut tail_start = bytes.len() - half;
    while tail_start < bytes.len() && continuation(bytes[tail_start]) {
        tail_start += 1;
    }
    let head = String::from_utf8_lossy(&bytes[..head_end]);
    let tail = String::from_utf8_lossy(&bytes[tail_start..]);
    format!(
        "{head}\n[toolbox: {} bytes cut here to keep this answer short; the last {} follow]\n{tail}",
        tail_start - head_end,
        bytes.len() - tail_start
    )
}

/// One line saying how a job ended, from its result record.
pub fn ending(record: &Value) -> String {
    let seconds = record["duration_ms"].as_u64().unwrap_or(0) as f64 / 1000.0;
    let code = record["exit_code"].as_i64().unwrap_or(-1);
    let status = record["status"].as_str().unwrap_or("unknown");
    let detail = record["reason"]
        .as_str()
        .or_else(|| record["error"].as_str())
        .map(|r| format!(": {r}"))
        .unwrap_or_default();
    match status {
        "exited" => format!("[exit {code} · {seconds:.2} s{detail}]"),
        _ => format!("[{status}, exit {code} · {seconds:.2} s{detail}]"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_keeps_head_and_tail_and_counts_the_cut() {
        let bytes: Vec<u8> = (0..100u8).map(|i| b'a' + i % 26).collect();
        let text = clip(&bytes, 20);
        assert!(text.starts_with("abcdefghij\n[toolbox: 80 bytes cut here"));
        assert!(text.ends_with(&String::from_utf8_lossy(&bytes[90..]).into_owned()));
        assert_eq!(clip(b"short", 20), "short");
    }

    #[test]
    fn events_and_chunks_gather_in_order_with_their_gaps() {
        let mut gathered = Gathered::default();
        gathered.take_event(&json!({"type": "stdout", "text": "a"}));
        gathered.take_event(&json!({"type": "stdout", "base64": "/w=="}));
        gathered.take_event(
            &json!({"type": "truncated", "stream": "stdout", "dropped_bytes": 5, "kept_bytes": 1}),
        );
        gathered.take_chunks(
            "stderr",
            &json!({"since": 0, "next": 9, "chunks": [{"offset": 0, "text": "e"}, {"offset": 1, "dropped_bytes": 7}, {"offset": 8, "text": "f"}]}),
        );
        assert_eq!(&gathered.stdout[..2], b"a\xff");
        assert!(String::from_utf8_lossy(&gathered.stdout).contains("5 bytes of stdout dropped"));
        let text = gathered.text();
        assert!(
            text.contains("[stderr]\ne\n[toolbox: 7 bytes of stderr dropped"),
            "{text}"
        );
        assert!(text.ends_with('f'));
    }

    #[test]
    fn the_ending_names_status_code_and_reason() {
        assert_eq!(
            ending(&json!({"status": "exited", "exit_code": 3, "duration_ms": 1500})),
            "[exit 3 · 1.50 s]"
        );
        assert_eq!(
            ending(
                &json!({"status": "timeout", "exit_code": 124, "duration_ms": 2000, "reason": "ran past its timeout of 2s"})
            ),
            "[timeout, exit 124 · 2.00 s: ran past its timeout of 2s]"
        );
    }
}
