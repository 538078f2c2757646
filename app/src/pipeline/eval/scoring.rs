//! VSI-Bench scoring as upstream Spatial-MLLM does it (`src/evaluation/vsibench/dataset_utils.py`
//! and `calculate_metrics` in `eval_vsibench.py`, commit 9fc4738): the answer cleaning, exact
//! match for multiple choice, mean relative accuracy in float32 for numbers, and the metrics with
//! the relative-direction types averaged into one score for the macro.

use anyhow::{Result, bail};
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// The three relative-direction types, averaged into one score before the macro averages.
pub const REL_DIRECTION_TYPES: [&str; 3] = ["object_rel_direction_easy", "object_rel_direction_medium", "object_rel_direction_hard"];

/// Multiple-choice types (answered with an option's letter, scored by exact match).
pub const MCA_QUESTION_TYPES: [&str; 6] =
    ["object_rel_direction_easy", "object_rel_direction_medium", "object_rel_direction_hard", "object_rel_distance", "route_planning", "obj_appearance_order"];

/// Numeric-answer types (scored by mean relative accuracy).
pub const NA_QUESTION_TYPES: [&str; 4] = ["object_abs_distance", "object_counting", "object_size_estimation", "room_size_estimation"];

/// How a question type is answered and scored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerKind {
    MultipleChoice,
    Numeric,
}

pub fn answer_kind(question_type: &str) -> Option<AnswerKind> {
    if MCA_QUESTION_TYPES.contains(&question_type) {
        Some(AnswerKind::MultipleChoice)
    } else if NA_QUESTION_TYPES.contains(&question_type) {
        Some(AnswerKind::Numeric)
    } else {
        None
    }
}

/// The text inside the last `<answer>...</answer>` block (non-greedy, across lines), or all of it.
fn extract_answer(text: &str) -> &str {
    let mut last = None;
    let mut rest = 0;
    while let Some(start) = text[rest..].find("<answer>") {
        let open = rest + start + "<answer>".len();
        match text[open..].find("</answer>") {
            Some(end) => {
                last = Some(&text[open..open + end]);
                rest = open + end + "</answer>".len();
            }
            None => break,
        }
    }
    last.unwrap_or(text)
}

/// Python's `str.isspace` for one character (what `\s` matches in a `str` pattern, and what
/// `str.strip()` removes).
fn is_python_space(c: char) -> bool {
    c.is_whitespace() || matches!(c, '\u{1c}'..='\u{1f}')
}

/// Upstream's `clean_text`: the last answer block, line breaks and runs of whitespace folded to
/// one space, stripped, trailing dots removed, lower case.
pub fn clean_text(text: &str) -> String {
    let answer = extract_answer(text).replace(['\n', '\r'], " ");
    let mut folded = String::with_capacity(answer.len());
    let mut in_space = false;
    for c in answer.chars() {
        if is_python_space(c) {
            if !in_space {
                folded.push(' ');
            }
            in_space = true;
        } else {
            folded.push(c);
            in_space = false;
        }
    }
    // Rust's lowercase is Python's `str.lower` (full Unicode mapping, final sigma included).
    folded.trim_matches(is_python_space).trim_end_matches('.').to_lowercase()
}

/// Python's `float()` on a string with commas removed (upstream's `normalize_number`): surrounding
/// whitespace, a sign, digits with single underscores between them, a fraction, an exponent, or
/// inf/infinity/nan in any case. None where Python raises.
pub fn normalize_number(text: &str) -> Option<f64> {
    let s = text.replace(',', "");
    let s = s.trim_matches(is_python_space);
    if s.is_empty() {
        return None;
    }
    // Unicode decimal digits count as digits for Python; map the common ones (full-width, Arabic-
    // Indic...) to ASCII by their numeric value.
    let mut ascii = String::with_capacity(s.len());
    let chars: Vec<char> = s.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        if c == '_' {
            // Only between two digits.
            let digit = |c: Option<&char>| c.is_some_and(|c| c.is_ascii_digit() || unicode_digit(*c).is_some());
            if !(i > 0 && digit(chars.get(i - 1)) && digit(chars.get(i + 1))) {
                return None;
            }
            continue;
        }
        match unicode_digit(c) {
            Some(d) if !c.is_ascii() => ascii.push(char::from(b'0' + d)),
            _ => ascii.push(c),
        }
    }
    let body = ascii.strip_prefix(['+', '-']).unwrap_or(&ascii);
    let lower = body.to_ascii_lowercase();
    if matches!(lower.as_str(), "inf" | "infinity" | "nan") {
        return ascii.parse::<f64>().ok();
    }
    // Rust also accepts forms Python does not ("infinity" handled above); the grammar is otherwise
    // the same: digits, optional fraction, optional exponent with digits.
    let valid = {
        let b = body.as_bytes();
        let mut i = 0;
        let int_digits = b.iter().take_while(|c| c.is_ascii_digit()).count();
        i += int_digits;
        let mut frac_digits = 0;
        if b.get(i) == Some(&b'.') {
            i += 1;
            frac_digits = b[i..].iter().take_while(|c| c.is_ascii_digit()).count();
            i += frac_digits;
        }
        let mut ok = int_digits + frac_digits > 0;
        if ok && matches!(b.get(i), Some(b'e' | b'E')) {
            i += 1;
            if matches!(b.get(i), Some(b'+' | b'-')) {
                i += 1;
            }
            let exp_digits = b[i..].iter().take_while(|c| c.is_ascii_digit()).count();
            ok = exp_digits > 0;
            i += exp_digits;
        }
        ok && i == b.len()
    };
    if !valid {
        return None;
    }
    ascii.parse::<f64>().ok()
}

/// The value of a Unicode decimal digit (Nd) in the common blocks.
fn unicode_digit(c: char) -> Option<u8> {
    const ZEROS: [u32; 12] = [0x30, 0x660, 0x6F0, 0x7C0, 0x966, 0x9E6, 0xA66, 0xAE6, 0xE50, 0xFF10, 0x1D7CE, 0x1D7D8];
    let u = c as u32;
    ZEROS.iter().find(|&&z| (z..z + 10).contains(&u)).map(|z| (u - z) as u8)
}

/// Mean relative accuracy over the thresholds 0.50, 0.55, ..., 0.95, in float32 as upstream
/// computes it with torch: relative error |pred - target| / (|target| + 1e-8), each threshold a
/// success when the error is below 1 - threshold, the mean of the ten as a float32.
pub fn mean_relative_accuracy(pred: f64, target: f64) -> f64 {
    let (p, t) = (pred as f32, target as f32);
    let rel_error = (p - t).abs() / (t.abs() + 1e-8f32);
    // torch.arange in float32 computes start + i * step in double, then rounds.
    let hits = (0..10).filter(|&i| rel_error < 1.0f32 - (0.5f64 + i as f64 * 0.05) as f32).count();
    (hits as f32 / 10.0f32) as f64
}

/// Upstream's `vsi_reward` on cleaned answers.
pub fn vsi_reward(clean_gt: &str, clean_pred: &str, question_type: &str) -> Result<f64> {
    Ok(match answer_kind(question_type) {
        Some(AnswerKind::MultipleChoice) => f64::from(clean_pred.trim_matches(is_python_space) == clean_gt.trim_matches(is_python_space)),
        Some(AnswerKind::Numeric) => match (normalize_number(clean_gt), normalize_number(clean_pred)) {
            (Some(gt), Some(pred)) => mean_relative_accuracy(pred, gt),
            _ => 0.0,
        },
        None => bail!("unsupported question type '{question_type}' (VSI-Bench's are {} and {})", MCA_QUESTION_TYPES.join(", "), NA_QUESTION_TYPES.join(", ")),
    })
}

/// Scores one result in upstream's layout (`sample` with `question_type` and `ground_truth`, and
/// `model_output`), adding `cleaned_model_output`, `cleaned_gt_answer`, `reward` and `correct`.
pub fn score_result(result: &mut Value) -> Result<()> {
    let sample = &result["sample"];
    let question_type = sample["question_type"].as_str().map(String::from);
    let Some(question_type) = question_type else { bail!("no sample.question_type") };
    let gt = match &sample["ground_truth"] {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        // Python would fail on a number here (`re.findall` on a non-string); say so.
        other => bail!("sample.ground_truth is {other}, not a string"),
    };
    let output = match &result["model_output"] {
        Value::String(s) => s.clone(),
        other => bail!("model_output is {other}, not a string"),
    };
    let (clean_pred, clean_gt) = (clean_text(&output), clean_text(&gt));
    let reward = vsi_reward(&clean_gt, &clean_pred, &question_type)?;
    result["cleaned_model_output"] = json!(clean_pred);
    result["cleaned_gt_answer"] = json!(clean_gt);
    result["reward"] = json!(reward);
    result["correct"] = json!(reward == 1.0);
    Ok(())
}

fn mean(values: &[f64]) -> f64 {
    if values.is_empty() { 0.0 } else { values.iter().sum::<f64>() / values.len() as f64 }
}

/// Upstream's `calculate_metrics`: per question type score and count, micro and macro means of
/// the multiple-choice accuracy (`acc`), the numeric MRA (`mra`) and everything (`all`); the macro
/// averages the relative-direction types into one score first.
pub fn calculate_metrics(results: &[Value]) -> Value {
    let mut groups: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let (mut acc, mut mra, mut all) = (Vec::new(), Vec::new(), Vec::new());
    for r in results {
        let reward = r["reward"].as_f64().unwrap_or(0.0);
        let question_type = r["sample"]["question_type"].as_str().unwrap_or("").to_string();
        if NA_QUESTION_TYPES.contains(&question_type.as_str()) { &mut mra } else { &mut acc }.push(reward);
        all.push(reward);
        groups.entry(question_type).or_default().push(reward);
    }
    let per_type: BTreeMap<&str, f64> = groups.iter().map(|(q, v)| (q.as_str(), mean(v))).collect();
    let direction: Vec<f64> = REL_DIRECTION_TYPES.iter().filter_map(|q| per_type.get(q).copied()).collect();
    let direction_macro = (!direction.is_empty()).then(|| mean(&direction));
    let with_direction = |others: Vec<f64>| -> f64 { mean(&direction_macro.into_iter().chain(others).collect::<Vec<_>>()) };
    let is_direction = |q: &str| REL_DIRECTION_TYPES.contains(&q);
    let is_numeric = |q: &str| NA_QUESTION_TYPES.contains(&q);
    let macro_acc = with_direction(per_type.iter().filter(|(q, _)| !is_numeric(q) && !is_direction(q)).map(|(_, s)| *s).collect());
    let macro_mra = mean(&per_type.iter().filter(|(q, _)| is_numeric(q)).map(|(_, s)| *s).collect::<Vec<_>>());
    let macro_all = with_direction(per_type.iter().filter(|(q, _)| !is_direction(q)).map(|(_, s)| *s).collect());
    if results.is_empty() {
        return json!({"per_question_type": {}, "acc": {"micro": 0.0, "macro": 0.0}, "mra": {"micro": 0.0, "macro": 0.0}, "all": {"micro": 0.0, "macro": 0.0}});
    }
    json!({
        "per_question_type": groups.iter().map(|(q, v)| (q.clone(), json!({"score": mean(v), "count": v.len()}))).collect::<serde_json::Map<_, _>>(),
        "acc": {"micro": mean(&acc), "macro": macro_acc},
        "mra": {"micro": mean(&mra), "macro": macro_mra},
        "all": {"micro": mean(&all), "macro": macro_all},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleaning_takes_the_last_answer_block_and_folds_whitespace() {
        assert_eq!(clean_text("<think>a</think><answer> B </answer> then <answer>\n C.\n</answer>"), "c");
        assert_eq!(clean_text("The  answer\nis   B..."), "the answer is b");
        assert_eq!(clean_text("<answer>unclosed"), "<answer>unclosed");
        assert_eq!(clean_text("<answer>A</answer><answer>unclosed"), "a");
        assert_eq!(clean_text(""), "");
        assert_eq!(clean_text(" 1,234.5 m. "), "1,234.5 m");
        // Only trailing dots go; dots inside stay.
        assert_eq!(clean_text("3.50."), "3.50");
        assert_eq!(clean_text("\u{a0}x\u{2003}y\t"), "x y");
    }

    #[test]
    fn numbers_parse_like_python_float() {
        assert_eq!(normalize_number("1,234.5"), Some(1234.5));
        assert_eq!(normalize_number(" 12 "), Some(12.0));
        assert_eq!(normalize_number("1_000"), Some(1000.0));
        assert_eq!(normalize_number("1__000"), None);
        assert_eq!(normalize_number("_1"), None);
        assert_eq!(normalize_number("1e3"), Some(1000.0));
        assert_eq!(normalize_number(".5"), Some(0.5));
        assert_eq!(normalize_number("5."), Some(5.0));
        assert_eq!(normalize_number("-2"), Some(-2.0));
        assert_eq!(normalize_number("inf"), Some(f64::INFINITY));
        assert!(normalize_number("NaN").unwrap().is_nan());
        assert_eq!(normalize_number("１２"), Some(12.0));
        for bad in ["", "3 m", "three", "1e", "e5", ".", "0x10", "1.2.3", "--1", "1 000"] {
            assert_eq!(normalize_number(bad), None, "{bad}");
        }
    }

    #[test]
    fn mra_decides_thresholds_in_float32() {
        // Expected values from upstream's function with torch 2.15 (float32 stored as f64).
        for (pred, target, want) in [
            (1.15, 1.0, 0.699999988079071),
            (1.5, 1.0, 0.0),
            (1.0999999, 1.0, 0.8999999761581421),
            (0.9, 1.0, 0.800000011920929),
            (1.1, 1.0, 0.800000011920929),
            (2.7, 3.0, 0.8999999761581421),
            (1.3, 1.0, 0.5),
            (0.0, 0.0, 1.0),
            (1e-9, 0.0, 0.8999999761581421),
            (0.1, 0.0, 0.0),
            (f64::NAN, 1.0, 0.0),
            (f64::INFINITY, 1.0, 0.0),
        ] {
            assert_eq!(mean_relative_accuracy(pred, target), want, "pred {pred}, target {target}");
        }
    }

    #[test]
    fn macro_averages_directions_first_and_skips_missing_types() {
        let r = |q: &str, reward: f64| json!({"sample": {"question_type": q}, "reward": reward});
        let results = vec![r("object_rel_direction_easy", 1.0), r("object_rel_direction_hard", 0.0), r("route_planning", 1.0), r("object_counting", 0.5)];
        let m = calculate_metrics(&results);
        assert_eq!(m["per_question_type"]["object_rel_direction_easy"]["count"], 1);
        // acc: directions (1 + 0) / 2 = 0.5, route 1.0 -> 0.75; micro 2/3.
        assert_eq!(m["acc"]["macro"], 0.75);
        assert!((m["acc"]["micro"].as_f64().unwrap() - 2.0 / 3.0).abs() < 1e-15);
        assert_eq!(m["mra"]["macro"], 0.5);
        // all: (0.5 + 1.0 + 0.5) / 3.
        assert!((m["all"]["macro"].as_f64().unwrap() - 2.0 / 3.0).abs() < 1e-15);
        // Without any direction type the macro is over the others only.
        let m = calculate_metrics(&[r("route_planning", 1.0), r("room_size_estimation", 0.0)]);
        assert_eq!(m["acc"]["macro"], 1.0);
        assert_eq!(m["all"]["macro"], 0.5);
        let empty = calculate_metrics(&[]);
        assert_eq!(empty["all"]["macro"], 0.0);
        assert!(empty["per_question_type"].as_object().unwrap().is_empty());
    }

    #[test]
    fn unknown_types_are_an_error() {
        let e = vsi_reward("a", "a", "object_colour").unwrap_err().to_string();
        assert!(e.contains("object_colour"), "{e}");
    }
}
