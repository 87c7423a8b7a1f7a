//! Comparing JSON by value: reflexive and symmetric for any two texts, and equal
//! whenever serde_json reads both as the same value without floating point.
#![no_main]
use plexd_nodeapi::json_eq::same_value;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (a, b) = text.split_once('\u{0}').unwrap_or((text, text));
    assert!(same_value(a, a));
    assert_eq!(same_value(a, b), same_value(b, a), "{a:?} {b:?}");
    let (Ok(x), Ok(y)) = (
        serde_json::from_str::<serde_json::Value>(a),
        serde_json::from_str::<serde_json::Value>(b),
    ) else {
        return;
    };
    fn has_float(v: &serde_json::Value) -> bool {
        match v {
            serde_json::Value::Number(n) => n.is_f64(),
            serde_json::Value::Array(a) => a.iter().any(has_float),
            serde_json::Value::Object(o) => o.values().any(has_float),
            _ => false,
        }
    }
    if x == y && !has_float(&x) && !has_float(&y) && depth(&x) < 60 {
        assert!(same_value(a, b), "same value, judged different: {a:?} {b:?}");
    }
    if same_value(a, b) && !has_float(&x) && !has_float(&y) {
        assert_eq!(x, y, "judged the same: {a:?} {b:?}");
    }
});

fn depth(v: &serde_json::Value) -> usize {
    match v {
        serde_json::Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        serde_json::Value::Object(o) => 1 + o.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}
