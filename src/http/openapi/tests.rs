use serde_json::Value;

use super::*;

fn doc() -> Value {
    serde_json::from_str(json()).expect("the document is JSON")
}

/// Every operation of the document: (method, path, operation).
fn operations(doc: &Value) -> Vec<(String, String, Value)> {
    let mut all = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            if method != "servers" && method != "parameters" {
                all.push((method.clone(), path.clone(), op.clone()));
            }
        }
    }
    all
}

#[test]
fn the_document_is_built_the_same_every_time() {
    let again = serde_json::to_string_pretty(&document()).unwrap();
    assert_eq!(json(), again);
    assert_eq!(doc()["openapi"], "3.1.0");
}

#[test]
fn every_reference_names_a_component_that_exists() {
    let doc = doc();
    let mut stack = vec![&doc];
    let mut seen = 0;
    while let Some(value) = stack.pop() {
        match value {
            Value::Object(members) => {
                if let Some(Value::String(target)) = members.get("$ref") {
                    let pointer = target.strip_prefix('#').expect("a local reference");
                    assert!(doc.pointer(pointer).is_some(), "{target} does not exist");
                    seen += 1;
                }
                stack.extend(members.values());
            }
            Value::Array(items) => stack.extend(items),
            _ => {}
        }
    }
    assert!(seen > 100, "{seen} references");
}

#[test]
fn every_error_answer_carries_the_error_body() {
    let doc = doc();
    for (method, path, op) in operations(&doc) {
        for (status, response) in op["responses"].as_object().unwrap() {
            if status.as_str() < "400" {
                continue;
            }
            let target = response["$ref"].as_str().unwrap_or_else(|| {
                panic!("{method} {path} {status} is not one of the error answers")
            });
            let answer = doc.pointer(target.strip_prefix('#').unwrap()).unwrap();
            assert_eq!(
                answer["content"]["application/json"]["schema"]["$ref"],
                "#/components/schemas/Error",
                "{target}"
            );
            let by_status = ERROR_ANSWERS
                .iter()
                .find(|a| target.ends_with(&format!("/{}", a.name)))
                .unwrap();
            assert_eq!(by_status.status.to_string(), *status, "{target}");
        }
    }
}

#[test]
fn what_the_extractors_refuse_is_documented_wherever_they_are_used() {
    let doc = doc();
    for (method, path, op) in operations(&doc) {
        let statuses: Vec<&str> = op["responses"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let must = |status: &str, why: &str| {
            assert!(
                statuses.contains(&status),
                "{method} {path} lacks {status} ({why})"
            );
        };
        if op.get("security").is_some() {
            must("401", "a credential is required");
            must("429", "failed authentications are throttled");
        }
        if op.get("requestBody").is_some() {
            must("400", "the body is parsed");
            must("408", "the body must arrive in time");
            must("413", "the body is capped");
            if !path.starts_with("/webhooks/") {
                must("415", "the body must be declared JSON");
            }
        }
        let parameters = op["parameters"].as_array().cloned().unwrap_or_default();
        if parameters.iter().any(|p| p["in"] == "path") {
            must("404", "a path names a resource");
        }
        if parameters.iter().any(|p| p["in"] == "query") {
            must("400", "query parameters are parsed");
        }
        assert!(op["summary"].is_string(), "{method} {path} has no summary");
        assert_eq!(
            op["tags"].as_array().map(Vec::len),
            Some(1),
            "{method} {path}"
        );
    }
}

#[test]
fn a_request_body_says_whether_it_takes_unknown_members() {
    let doc = doc();
    for (method, path, op) in operations(&doc) {
        let Some(body) = op.get("requestBody") else {
            continue;
        };
        let target = body["content"]["application/json"]["schema"]["$ref"]
            .as_str()
            .unwrap();
        let schema = doc.pointer(target.strip_prefix('#').unwrap()).unwrap();
        let open =
            schema["additionalProperties"]["$ref"] == format!("#/components/schemas/{JSON_VALUE}");
        assert!(
            schema["additionalProperties"] == false || open,
            "{method} {path}: {target} neither refuses nor describes unknown members"
        );
    }
}

#[test]
fn the_error_identifiers_are_listed_once() {
    let doc = doc();
    let listed = doc["components"]["schemas"]["Error"]["properties"]["identifier"]["enum"]
        .as_array()
        .unwrap()
        .clone();
    let mut unique = listed.clone();
    unique.dedup();
    assert_eq!(listed.len(), super::super::error::IDENTIFIERS.len());
    assert_eq!(unique, listed);
}
