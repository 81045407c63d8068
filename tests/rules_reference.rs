//! Compares the text rules with reference outputs of the Python originals.
//!
//! The reference is a JSON-lines file named by `ULMFIT_RULES_REFERENCE`, one object per
//! line with `kind`, `input` and `output`. `kind` is a rule set name (`fastai2`,
//! `fastai1`), `imdb` or `nasty` for the whole fastai 2.x list, or the name of one Python
//! rule function (`fix_html`, `replace_rep`, ...) applied alone. For `fastai1_tokens`,
//! `input` and `output` are token lists for the fastai 1.0 token rules. The test is skipped when
//! the variable is unset. It also prints the throughput of `RuleSet::apply` on `imdb` lines.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::time::Instant;

use ulmfit::text::rules::{Rule, RuleSet};

fn rule_set_for(kind: &str) -> Option<RuleSet> {
    let single = |rule: Rule| RuleSet {
        name: kind.to_string(),
        rules: vec![rule],
    };
    let rule_set = match kind {
        "imdb" | "nasty" | "fastai2" => RuleSet::fastai2(),
        "fastai1" => RuleSet::fastai1(),
        "fix_html" => single(Rule::FixHtml),
        "replace_rep" => single(Rule::ReplaceRep),
        "replace_wrep" => single(Rule::ReplaceWrep),
        "spec_add_spaces" => single(Rule::SpecAddSpaces),
        "rm_useless_spaces" | "rm_useless_spaces_v1" => single(Rule::RmUselessSpaces),
        "replace_all_caps" => single(Rule::ReplaceAllCaps),
        "replace_maj" => single(Rule::ReplaceMaj),
        "lowercase" => single(Rule::Lowercase),
        "fix_html_v1" => single(Rule::FixHtmlV1),
        "replace_rep_v1" => single(Rule::ReplaceRepV1),
        "replace_wrep_v1" => single(Rule::ReplaceWrepV1),
        "spec_add_spaces_v1" => single(Rule::SpecAddSpacesV1),
        _ => return None,
    };
    Some(rule_set)
}

#[test]
fn rules_match_python_reference() {
    let Some(path) = std::env::var_os("ULMFIT_RULES_REFERENCE") else {
        eprintln!("skipped rules_match_python_reference: ULMFIT_RULES_REFERENCE is not set");
        return;
    };
    let file = std::fs::File::open(&path).expect("reference file should open");
    let mut totals: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let mut shown = 0;
    let mut imdb_inputs = Vec::new();
    for (number, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.expect("reference file should be readable");
        let record: serde_json::Value = serde_json::from_str(&line).expect("line should be JSON");
        let kind = record["kind"].as_str().expect("kind should be a string");
        if kind == "fastai1_tokens" {
            let strings = |value: &serde_json::Value| -> Vec<String> {
                let items = value.as_array().expect("token list should be an array");
                items
                    .iter()
                    .map(|item| item.as_str().expect("token should be a string").to_string())
                    .collect()
            };
            let mut actual = strings(&record["input"]);
            RuleSet::fastai1().apply_to_tokens(&mut actual);
            let expected = strings(&record["output"]);
            let entry = totals.entry(kind.to_string()).or_default();
            entry.0 += 1;
            if actual != expected {
                entry.1 += 1;
                if shown < 20 {
                    shown += 1;
                    eprintln!("line {}: {kind}\n  input:    {}\n  expected: {expected:?}\n  actual:   {actual:?}", number + 1, record["input"]);
                }
            }
            continue;
        }
        let input = record["input"].as_str().expect("input should be a string");
        let expected = record["output"]
            .as_str()
            .expect("output should be a string");
        let rule_set = rule_set_for(kind).unwrap_or_else(|| panic!("unknown kind {kind:?}"));
        let actual = rule_set.apply(input);
        let entry = totals.entry(kind.to_string()).or_default();
        entry.0 += 1;
        if actual != expected {
            entry.1 += 1;
            if shown < 20 {
                shown += 1;
                eprintln!(
                    "line {}: {kind}\n  input:    {input:?}\n  expected: {expected:?}\n  actual:   {actual:?}",
                    number + 1
                );
            }
        }
        if kind == "imdb" {
            imdb_inputs.push(input.to_string());
        }
    }
    for (kind, (count, mismatches)) in &totals {
        eprintln!("{kind}: {} of {count} match", count - mismatches);
    }

    let bytes: usize = imdb_inputs.iter().map(String::len).sum();
    if bytes > 0 {
        let rule_set = RuleSet::fastai2();
        let started = Instant::now();
        let mut output_bytes = 0;
        for text in &imdb_inputs {
            output_bytes += rule_set.apply(text).len();
        }
        let seconds = started.elapsed().as_secs_f64();
        eprintln!(
            "apply: {} texts, {:.1} MB in {seconds:.3} s, {:.1} MB/s on one thread ({output_bytes} output bytes)",
            imdb_inputs.len(),
            bytes as f64 / 1e6,
            bytes as f64 / 1e6 / seconds
        );
    }

    let mismatches: usize = totals.values().map(|(_, mismatches)| mismatches).sum();
    assert_eq!(mismatches, 0, "outputs differ from the Python reference");
}
