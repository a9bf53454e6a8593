//! Every response the tests get from a daemon is checked against `api/openapi.yaml`: the
//! operation its method and path name, the status (or `default`), the content type, and the
//! body against that response's JSON Schema (each line of an NDJSON stream against the
//! line's schema). A response the document does not describe fails the test that got it,
//! so the document cannot drift from the daemon.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use serde_json::Value;

/// The document, built into the tests (the VM tiers run them where no checkout is).
const DOCUMENT: &str = include_str!("../../api/openapi.yaml");

fn document() -> &'static Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(|| serde_yaml::from_str(DOCUMENT).expect("api/openapi.yaml is YAML"))
}

/// A validator for the schema at JSON pointer `pointer` of the document (refs resolve in
/// the whole document).
fn validate_at(pointer: &str, instance: &Value) -> Result<(), String> {
    static VALIDATORS: OnceLock<Mutex<HashMap<String, &'static jsonschema::Validator>>> =
        OnceLock::new();
    let validators = VALIDATORS.get_or_init(|| Mutex::new(HashMap::new()));
    let validator = {
        let mut cache = validators.lock().unwrap_or_else(|e| e.into_inner());
        match cache.get(pointer) {
            Some(validator) => *validator,
            None => {
                let mut root = document().clone();
                root["$schema"] = "https://json-schema.org/draft/2020-12/schema".into();
                // A URI fragment: the braces of path templates are escaped.
                root["$ref"] =
                    format!("#{}", pointer.replace('{', "%7B").replace('}', "%7D")).into();
                let validator = jsonschema::options()
                    .with_draft(jsonschema::Draft::Draft202012)
                    .build(&root)
                    .unwrap_or_else(|e| panic!("the schema at {pointer} does not compile: {e}"));
                let leaked: &'static jsonschema::Validator = Box::leak(Box::new(validator));
                cache.insert(pointer.to_string(), leaked);
                leaked
            }
        }
    };
    let errors: Vec<String> = validator
        .iter_errors(instance)
        .map(|e| format!("{} at {}", e, e.instance_path))
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

fn escape(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

/// The document's path template for a request path (`/v1/jobs/abc/output` →
/// `/v1/jobs/{id}/output`).
fn template(path: &str) -> Option<String> {
    let path = path.split('?').next().unwrap_or(path);
    let segments: Vec<&str> = path.split('/').collect();
    document()["paths"]
        .as_object()?
        .keys()
        .find(|candidate| {
            let parts: Vec<&str> = candidate.split('/').collect();
            parts.len() == segments.len()
                && parts.iter().zip(&segments).all(|(part, segment)| {
                    part == segment || (part.starts_with('{') && !segment.is_empty())
                })
        })
        .cloned()
}

/// Where the schema of a response is: a pointer into the document.
fn response_schema(
    method: &str,
    path: &str,
    status: u16,
    content_type: &str,
) -> Result<Option<String>, String> {
    let doc = document();
    let error_schema = Ok(Some("/components/schemas/Error".to_string()));
    let Some(template) = template(path) else {
        // No such path: a refusal, as every answer outside the document must be.
        return if status >= 400 {
            error_schema
        } else {
            Err(format!(
                "{status} for {path}, which api/openapi.yaml does not describe"
            ))
        };
    };
    let method = method.to_ascii_lowercase();
    let operation_pointer = format!("/paths/{}/{method}", escape(&template));
    let Some(operation) = doc.pointer(&operation_pointer) else {
        return if status == 405 {
            error_schema
        } else {
            Err(format!(
                "{status} for {method} {template}, an operation api/openapi.yaml does not describe"
            ))
        };
    };
    let key = status.to_string();
    let (key, mut response) = match operation["responses"].get(&key) {
        Some(response) => (key, response),
        None => (
            "default".to_string(),
            operation["responses"]
                .get("default")
                .ok_or_else(|| format!("{status} is not a response of {method} {template}"))?,
        ),
    };
    if key == "default" && status < 400 {
        return Err(format!(
            "{status} is not a documented response of {method} {template} (only refusals fall to default)"
        ));
    }
    let mut pointer = format!("{operation_pointer}/responses/{key}");
    if let Some(reference) = response.get("$ref").and_then(Value::as_str) {
        pointer = reference.trim_start_matches('#').to_string();
        response = doc
            .pointer(&pointer)
            .ok_or_else(|| format!("{reference} is not in the document"))?;
    }
    let media = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if response["content"].get(&media).is_none() {
        return Err(format!(
            "{method} {template} {status}: content type {media:?} is not documented (documented: {})",
            response["content"]
                .as_object()
                .map(|c| c.keys().cloned().collect::<Vec<_>>().join(", "))
                .unwrap_or_default()
        ));
    }
    if media == "text/plain" {
        return Ok(None);
    }
    Ok(Some(format!("{pointer}/content/{}/schema", escape(&media))))
}

/// Check one whole response; panics naming what does not match.
pub fn check(method: &str, path: &str, status: u16, content_type: Option<&str>, body: &[u8]) {
    let content_type = content_type.unwrap_or("");
    let pointer = match response_schema(method, path, status, content_type) {
        Ok(Some(pointer)) => pointer,
        Ok(None) => return,
        Err(message) => panic!("api/openapi.yaml: {message}"),
    };
    if content_type.starts_with("application/x-ndjson") {
        for line in body.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            check_line(&pointer, line, method, path);
        }
        return;
    }
    let value: Value = serde_json::from_slice(body).unwrap_or_else(|e| {
        panic!(
            "{method} {path} {status}: the body is not JSON ({e}): {}",
            String::from_utf8_lossy(body)
        )
    });
    if let Err(errors) = validate_at(&pointer, &value) {
        panic!("{method} {path} {status}: the answer does not match api/openapi.yaml ({pointer}): {errors}\n{value}");
    }
}

/// The schema of one line of a streamed answer of `path`, if it streams.
pub fn stream_schema(
    method: &str,
    path: &str,
    status: u16,
    content_type: Option<&str>,
) -> Option<String> {
    match response_schema(method, path, status, content_type.unwrap_or("")) {
        Ok(pointer) => pointer,
        Err(message) => panic!("api/openapi.yaml: {message}"),
    }
}

/// Check one line of a streamed answer against its schema.
pub fn check_line(pointer: &str, line: &[u8], method: &str, path: &str) {
    let value: Value = serde_json::from_slice(line).unwrap_or_else(|e| {
        panic!(
            "{method} {path}: a stream line is not JSON ({e}): {}",
            String::from_utf8_lossy(line)
        )
    });
    if let Err(errors) = validate_at(pointer, &value) {
        panic!("{method} {path}: a stream line does not match api/openapi.yaml ({pointer}): {errors}\n{value}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_find_their_templates() {
        assert_eq!(template("/v1/jobs").as_deref(), Some("/v1/jobs"));
        assert_eq!(
            template("/v1/jobs/abc/output?since=3").as_deref(),
            Some("/v1/jobs/{id}/output")
        );
        assert_eq!(template("/v1/jobs/abc").as_deref(), Some("/v1/jobs/{id}"));
        assert_eq!(template("/v1/nothing"), None);
    }

    #[test]
    fn a_record_missing_a_field_or_with_one_too_many_is_caught() {
        let ok =
            serde_json::json!({"error": {"code": "bad_request", "message": "x", "field": "argv"}});
        assert!(validate_at("/components/schemas/Error", &ok).is_ok());
        let extra = serde_json::json!({"error": {"code": "x", "message": "y", "colour": 1}});
        assert!(validate_at("/components/schemas/Error", &extra).is_err());
        let event = serde_json::json!({"type": "stdout", "text": "hi"});
        assert!(validate_at("/components/schemas/Event", &event).is_ok());
        let wrong = serde_json::json!({"type": "stdout", "text": 3});
        assert!(validate_at("/components/schemas/Event", &wrong).is_err());
        let exit = serde_json::json!({"type": "exit", "job_id": "x"});
        assert!(validate_at("/components/schemas/Event", &exit).is_err());
    }
}
