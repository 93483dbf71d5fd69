//! Documentation that must match the code: the README's error table.

use std::collections::BTreeMap;

use kataven_hub::error::ErrorKind;
use serde_json::Value;
use strum::IntoEnumIterator;

const README: &str = include_str!("../../README.md");

/// The rows of the README's error table (`| Code | Status | Meaning |`): code → status.
fn readme_error_table() -> Vec<(String, u16)> {
    let mut lines = README
        .lines()
        .skip_while(|l| !l.starts_with("| Code | Status | Meaning |"));
    assert!(lines.next().is_some(), "the README has no error table");
    assert!(lines.next().is_some_and(|l| l.starts_with("|---")));
    lines
        .take_while(|l| l.starts_with('|'))
        .map(|row| {
            let cells: Vec<&str> = row.split('|').map(str::trim).collect();
            let code = cells[1].trim_matches('`').to_owned();
            let status = cells[2]
                .parse()
                .unwrap_or_else(|_| panic!("no status in the README row {row}"));
            (code, status)
        })
        .collect()
}

/// Every code the code can produce, with its status (`ErrorKind` has one variant per
/// `ApiError` variant, enforced by its derive).
fn codes_of_the_code() -> BTreeMap<&'static str, u16> {
    let mut codes = BTreeMap::new();
    for kind in ErrorKind::iter() {
        let status = kind.status().as_u16();
        if let Some(other) = codes.insert(kind.code(), status) {
            assert_eq!(other, status, "`{}` has two statuses", kind.code());
        }
    }
    codes
}

#[test]
fn the_readme_error_table_lists_exactly_the_codes_the_code_produces() {
    let table = readme_error_table();
    let code = codes_of_the_code();
    assert_eq!(
        ErrorKind::all_codes().len(),
        code.len(),
        "all_codes() lists each code once"
    );
    let mut seen = BTreeMap::new();
    for (name, status) in &table {
        assert!(
            seen.insert(name.as_str(), *status).is_none(),
            "`{name}` is twice in the README's error table"
        );
        match code.get(name.as_str()) {
            None => panic!("the README's error table lists `{name}`, which no ApiError produces"),
            Some(expected) => assert_eq!(
                status, expected,
                "the README gives `{name}` the status {status}, the code {expected}"
            ),
        }
    }
    for name in code.keys() {
        assert!(
            seen.contains_key(name),
            "`{name}` is missing from the README's error table"
        );
    }
}

/// The description of `error.code` in the OpenAPI document names every code too.
#[test]
fn the_openapi_description_of_error_code_names_every_code() {
    let doc: Value = serde_json::from_str(kataven_hub::routes::openapi::json()).unwrap();
    let description =
        doc["components"]["schemas"]["ErrorDetail"]["properties"]["code"]["description"]
            .as_str()
            .expect("a description of error.code");
    for code in ErrorKind::all_codes() {
        assert!(
            description.contains(&format!("`{code}`")),
            "the description of error.code lacks `{code}`: {description}"
        );
    }
}
