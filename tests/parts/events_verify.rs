//! Envelope canonicalisation and verification: the shared Go-checked vectors, then
//! replay, rotation, malformed input and a fuzz-style no-panic check.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use plexd_nodeapi::events::{
    sign::new_nonce, Envelope, KeySet, PublicKey, RejectReason, Signer, SigningKeyError, Verifier,
    FRESHNESS_WINDOW,
};
use plexd_nodeapi::model::SigningKeys;
use plexd_nodeapi::timefmt::{format_rfc3339_utc, parse_rfc3339};
use serde_json::Value;

fn vectors() -> Value {
    let beside = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/vectors/envelopes.json"
    ));
    let path = if beside.exists() {
        beside
    } else {
        PathBuf::from("/work/shared/vectors/envelopes.json")
    };
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    serde_json::from_str(&text).unwrap()
}

fn field<'a>(v: &'a Value, name: &str) -> &'a str {
    v[name]
        .as_str()
        .unwrap_or_else(|| panic!("vector field {name}"))
}

fn time(s: &str) -> SystemTime {
    parse_rfc3339(s).unwrap().to_system_time()
}

/// 2026-03-01T12:00:00Z, the vectors' `now`.
fn noon() -> SystemTime {
    time("2026-03-01T12:00:00Z")
}

fn test_signer() -> Signer {
    Signer::from_seed(&std::array::from_fn(|i| i as u8 + 1)).unwrap()
}

fn verifier_for(signer: &Signer) -> Verifier {
    Verifier::new(Some(KeySet::new(signer.public_key())))
}

fn at(base: SystemTime, secs: i64) -> SystemTime {
    if secs >= 0 {
        base + Duration::from_secs(secs as u64)
    } else {
        base - Duration::from_secs(secs.unsigned_abs())
    }
}

fn signed(signer: &Signer, id: &str, issued: SystemTime, nonce: &str) -> String {
    signer
        .sign_envelope(
            "node_state_updated",
            id,
            &format_rfc3339_utc(issued),
            nonce,
            r#"{"metadata":{},"data":[]}"#,
        )
        .unwrap()
}

#[test]
fn vector_seed_matches_public_key() {
    let v = vectors();
    let seed_hex = field(&v, "signing_seed_hex");
    let seed: [u8; 32] =
        std::array::from_fn(|i| u8::from_str_radix(&seed_hex[2 * i..2 * i + 2], 16).unwrap());
    let signer = Signer::from_seed(&seed).unwrap();
    assert_eq!(signer.public_key_b64(), field(&v, "public_key"));
    assert_eq!(test_signer().public_key_b64(), field(&v, "public_key"));
}

#[test]
fn vectors_canonical_bytes() {
    let v = vectors();
    let cases = v["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 14);
    for case in cases {
        let name = field(case, "name");
        let env =
            Envelope::parse(field(case, "envelope")).unwrap_or_else(|e| panic!("{name}: {e}"));
        let ours = env.canonical_bytes().unwrap();
        let want = STANDARD.decode(field(case, "canonical_b64")).unwrap();
        assert_eq!(
            want,
            field(case, "canonical_text").as_bytes(),
            "{name}: vector self-check"
        );
        if name == "tampered_payload" {
            // canonical_b64 is what was signed; the wire payload was changed afterwards.
            assert_ne!(ours, want, "{name}");
            let changed = String::from_utf8(want.clone())
                .unwrap()
                .replace("worker", "admin");
            assert_eq!(ours, changed.as_bytes(), "{name}");
        } else {
            assert_eq!(
                String::from_utf8_lossy(&ours),
                String::from_utf8_lossy(&want),
                "{name}"
            );
        }
    }
}

#[test]
fn vectors_verify_at_now() {
    let v = vectors();
    let now = time(field(&v, "now"));
    let key = PublicKey::from_base64(field(&v, "public_key")).unwrap();
    let verifier = Verifier::new(Some(KeySet::new(key)));
    for case in v["cases"].as_array().unwrap() {
        let name = field(case, "name");
        let result = verifier.verify_at(field(case, "envelope"), now);
        assert_eq!(
            result.is_ok(),
            case["valid"].as_bool().unwrap(),
            "{name}: {result:?}"
        );
        let expected_reason = match name {
            "tampered_payload" | "wrong_key" | "garbage_signature" => {
                Some(RejectReason::BadSignature)
            }
            "stale" => Some(RejectReason::Stale),
            "future" => Some(RejectReason::Future),
            _ => None,
        };
        assert_eq!(result.as_ref().err().copied(), expected_reason, "{name}");
        if let Ok(event) = result {
            let env = Envelope::parse(field(case, "envelope")).unwrap();
            assert_eq!(event.event_type, env.event_type);
            assert_eq!(event.event_id, env.event_id);
            assert_eq!(
                event.payload.get(),
                env.payload.get(),
                "{name}: payload verbatim"
            );
        }
    }
    // Every valid vector's nonce is now remembered.
    for case in v["cases"].as_array().unwrap() {
        if case["valid"].as_bool().unwrap() {
            assert_eq!(
                verifier.verify_at(field(case, "envelope"), now).err(),
                Some(RejectReason::Replayed),
                "{}",
                field(case, "name")
            );
        }
    }
}

#[test]
fn vector_wrong_key_accepted_as_previous_key_until_transition_expires() {
    let v = vectors();
    let now = time(field(&v, "now"));
    let wrong_key = v["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "wrong_key")
        .map(|c| field(c, "envelope").to_owned())
        .unwrap();
    let current = PublicKey::from_base64(field(&v, "public_key")).unwrap();
    let other = PublicKey::from_base64(field(&v, "other_public_key")).unwrap();

    let before = Verifier::new(Some(KeySet::new(current).with_previous(other, at(now, 1))));
    assert!(before.verify_at(&wrong_key, now).is_ok());

    let expired = Verifier::new(Some(KeySet::new(current).with_previous(other, now)));
    assert_eq!(
        expired.verify_at(&wrong_key, now).err(),
        Some(RejectReason::BadSignature)
    );

    // The same through `signing_keys` from a state response.
    let keys = SigningKeys {
        current: field(&v, "public_key").to_owned(),
        previous: field(&v, "other_public_key").to_owned(),
        transition_expires: "2026-03-01T12:30:00+00:00".to_owned(),
    };
    let set = KeySet::from_signing_keys(&keys).unwrap();
    let verifier = Verifier::new(Some(set.clone()));
    assert!(verifier.verify_at(&wrong_key, now).is_ok());
    let verifier = Verifier::new(Some(set));
    assert_eq!(
        verifier.verify_at(&wrong_key, at(now, 30 * 60)).err(),
        Some(RejectReason::Stale),
        "stale anyway 30 min later"
    );
}

#[test]
fn previous_key_only_before_transition_expires() {
    let old = test_signer();
    let (new, _) = Signer::generate().unwrap();
    let t = noon();
    let verifier = Verifier::new(Some(
        KeySet::new(new.public_key()).with_previous(old.public_key(), at(t, 60)),
    ));
    assert!(verifier.verify_at(&signed(&old, "a", t, "n-a"), t).is_ok());
    assert!(verifier
        .verify_at(&signed(&old, "b", at(t, 59), "n-b"), at(t, 59))
        .is_ok());
    assert_eq!(
        verifier
            .verify_at(&signed(&old, "c", at(t, 60), "n-c"), at(t, 60))
            .err(),
        Some(RejectReason::BadSignature)
    );
    assert!(verifier
        .verify_at(&signed(&new, "d", at(t, 60), "n-d"), at(t, 60))
        .is_ok());
}

#[test]
fn keys_swapped_at_run_time_from_another_thread() {
    let old = test_signer();
    let (new, _) = Signer::generate().unwrap();
    let verifier = Arc::new(Verifier::new(None));
    let t = noon();
    assert_eq!(
        verifier.verify_at(&signed(&old, "a", t, "n-a"), t).err(),
        Some(RejectReason::NoKeys)
    );
    assert_eq!(
        verifier.verify_at("not json", t).err(),
        Some(RejectReason::NoKeys)
    );

    let v2 = Arc::clone(&verifier);
    let old_key = old.public_key();
    std::thread::spawn(move || v2.set_keys(KeySet::new(old_key)))
        .join()
        .unwrap();
    assert!(verifier.verify_at(&signed(&old, "a", t, "n-a"), t).is_ok());
    assert_eq!(
        verifier.verify_at(&signed(&new, "b", t, "n-b"), t).err(),
        Some(RejectReason::BadSignature)
    );

    verifier.set_keys(KeySet::new(new.public_key()));
    assert_eq!(verifier.keys().unwrap().current(), new.public_key());
    assert!(verifier.verify_at(&signed(&new, "b", t, "n-b"), t).is_ok());
    assert_eq!(
        verifier.verify_at(&signed(&old, "c", t, "n-c"), t).err(),
        Some(RejectReason::BadSignature)
    );

    verifier.clear_keys();
    assert_eq!(
        verifier.verify_at(&signed(&new, "d", t, "n-d"), t).err(),
        Some(RejectReason::NoKeys)
    );
}

#[test]
fn round_trip_sign_then_verify() {
    let (signer, pkcs8) = Signer::generate().unwrap();
    let reloaded = Signer::from_pkcs8(&pkcs8).unwrap();
    assert_eq!(reloaded.public_key(), signer.public_key());
    let key = PublicKey::from_base64(&signer.public_key_b64()).unwrap();
    let verifier = Verifier::new(Some(KeySet::new(key)));
    let nonce = new_nonce().unwrap();
    assert_eq!(nonce.len(), 32);
    assert_ne!(nonce, new_nonce().unwrap());
    let payload = "{ \"secret_refs\" : [ {\"key\":\"db/<pw>\",\"version\":2} ] ,\n \"x\":1.50}";
    let issued = SystemTime::now();
    let text = plexd_nodeapi::events::sign_envelope(
        signer.key_pair(),
        "node_secrets_updated",
        "evt\u{2028}<1>",
        &format_rfc3339_utc(issued),
        &nonce,
        payload,
    )
    .unwrap();
    let event = verifier.verify(&text).unwrap();
    assert_eq!(event.event_type, "node_secrets_updated");
    assert_eq!(event.event_id, "evt\u{2028}<1>");
    assert_eq!(event.payload.get(), payload, "payload served as sent");
    assert_eq!(verifier.verify(&text).err(), Some(RejectReason::Replayed));
    assert_eq!(verifier.remembered_nonces(), 1);

    // Non-UTC offsets and untrimmed fractions sign and verify as Go would.
    let text = signer
        .sign_envelope("t", "id", "2026-03-01T13:59:30.500000+02:00", "nn", "{}")
        .unwrap();
    assert!(verifier.verify_at(&text, noon()).is_ok());

    // Invalid inputs to the signer are errors, not panics.
    assert!(signer
        .sign_envelope("t", "i", "yesterday", "n", "{}")
        .is_err());
    assert!(signer
        .sign_envelope("t", "i", "2026-03-01T12:00:00Z", "n", "{")
        .is_err());
    assert!(Signer::from_pkcs8(b"not a key").is_err());
}

#[test]
fn replayed_nonce_rejected_within_window_and_accepted_after_eviction() {
    let signer = test_signer();
    let verifier = verifier_for(&signer);
    let t = noon();
    assert!(verifier
        .verify_at(&signed(&signer, "1", t, "same"), t)
        .is_ok());
    // The identical event, and a new event reusing the nonce, within 5 minutes.
    assert_eq!(
        verifier
            .verify_at(&signed(&signer, "1", t, "same"), at(t, 1))
            .err(),
        Some(RejectReason::Replayed)
    );
    let later = at(t, 299);
    assert_eq!(
        verifier
            .verify_at(&signed(&signer, "2", later, "same"), later)
            .err(),
        Some(RejectReason::Replayed)
    );
    let exactly = at(t, 300);
    assert_eq!(
        verifier
            .verify_at(&signed(&signer, "3", exactly, "same"), exactly)
            .err(),
        Some(RejectReason::Replayed),
        "seen exactly 5 minutes ago still counts"
    );
    // The original is stale by now anyway.
    assert_eq!(
        verifier
            .verify_at(&signed(&signer, "1", t, "same"), at(t, 301))
            .err(),
        Some(RejectReason::Stale)
    );
    // After 5 minutes the nonce is forgotten and may be used again.
    let after = at(t, 301);
    assert!(verifier
        .verify_at(&signed(&signer, "4", after, "same"), after)
        .is_ok());
    assert_eq!(verifier.remembered_nonces(), 1, "expired entry evicted");
}

#[test]
fn future_dated_nonce_is_kept_until_its_event_goes_stale() {
    let signer = test_signer();
    let verifier = verifier_for(&signer);
    let t = noon();
    let issued = at(t, 300); // at the future edge, still fresh
    let text = signed(&signer, "f", issued, "ahead");
    assert!(verifier.verify_at(&text, t).is_ok());
    // Seen more than 5 minutes ago, but the event is still fresh: must stay a replay.
    assert_eq!(
        verifier.verify_at(&text, at(t, 420)).err(),
        Some(RejectReason::Replayed)
    );
    assert_eq!(
        verifier.verify_at(&text, at(t, 600)).err(),
        Some(RejectReason::Replayed)
    );
    assert_eq!(
        verifier.verify_at(&text, at(t, 601)).err(),
        Some(RejectReason::Stale)
    );
}

#[test]
fn freshness_boundaries() {
    let signer = test_signer();
    let verifier = verifier_for(&signer);
    let t = noon();
    let w = FRESHNESS_WINDOW;
    assert!(verifier
        .verify_at(&signed(&signer, "a", t, "a"), t + w)
        .is_ok());
    assert!(verifier
        .verify_at(&signed(&signer, "b", t, "b"), t - w)
        .is_ok());
    let nano = Duration::from_nanos(1);
    assert_eq!(
        verifier
            .verify_at(&signed(&signer, "c", t, "c"), t + w + nano)
            .err(),
        Some(RejectReason::Stale)
    );
    assert_eq!(
        verifier
            .verify_at(&signed(&signer, "d", t, "d"), t - w - nano)
            .err(),
        Some(RejectReason::Future)
    );
}

#[test]
fn forged_event_does_not_record_its_nonce() {
    let genuine = test_signer();
    let (forger, _) = Signer::generate().unwrap();
    let verifier = verifier_for(&genuine);
    let t = noon();
    let forged = signed(&forger, "x", t, "victim-nonce");
    assert_eq!(
        verifier.verify_at(&forged, t).err(),
        Some(RejectReason::BadSignature)
    );
    // A bad signature on an otherwise genuine event does not record it either.
    let real = signed(&genuine, "x", t, "victim-nonce");
    let broken = real.replace("\"signature\":\"", "\"signature\":\"AAAA");
    assert_eq!(
        verifier.verify_at(&broken, t).err(),
        Some(RejectReason::BadSignature)
    );
    assert_eq!(verifier.remembered_nonces(), 0);
    assert!(verifier.verify_at(&real, t).is_ok());
    // Stale and future events do not record their nonces.
    let stale = signed(&genuine, "s", at(t, -400), "n-stale");
    assert_eq!(
        verifier.verify_at(&stale, t).err(),
        Some(RejectReason::Stale)
    );
    assert!(verifier
        .verify_at(&signed(&genuine, "s2", t, "n-stale"), t)
        .is_ok());
}

#[test]
fn nonce_store_is_capped_oldest_first() {
    let signer = test_signer();
    let verifier = Verifier::with_nonce_cap(Some(KeySet::new(signer.public_key())), 3);
    let t = noon();
    for i in 0..5 {
        let now = at(t, i);
        let text = signed(&signer, &format!("e{i}"), now, &format!("n{i}"));
        assert!(verifier.verify_at(&text, now).is_ok());
        assert!(verifier.remembered_nonces() <= 3);
    }
    let now = at(t, 10);
    // n0 and n1 were evicted to make room; n2..n4 are still remembered.
    assert!(verifier
        .verify_at(&signed(&signer, "r0", now, "n0"), now)
        .is_ok());
    assert_eq!(
        verifier
            .verify_at(&signed(&signer, "r4", now, "n4"), now)
            .err(),
        Some(RejectReason::Replayed)
    );
}

#[test]
fn concurrent_duplicates_accept_exactly_once() {
    let signer = test_signer();
    let verifier = Arc::new(verifier_for(&signer));
    let text = Arc::new(signed(&signer, "race", noon(), "race"));
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let (v, t) = (Arc::clone(&verifier), Arc::clone(&text));
            std::thread::spawn(move || v.verify_at(&t, noon()).is_ok())
        })
        .collect();
    let accepted = handles
        .into_iter()
        .map(|h| h.join().unwrap())
        .filter(|ok| *ok)
        .count();
    assert_eq!(accepted, 1);
}

#[test]
fn missing_fields() {
    let signer = test_signer();
    let verifier = verifier_for(&signer);
    let t = noon();
    let full: Value = serde_json::from_str(&signed(&signer, "m", t, "m")).unwrap();
    for name in [
        "event_type",
        "event_id",
        "issued_at",
        "nonce",
        "payload",
        "signature",
    ] {
        let mut absent = full.clone();
        absent.as_object_mut().unwrap().remove(name);
        let expect = Some(RejectReason::MissingField(match name {
            "event_type" => "event_type",
            "event_id" => "event_id",
            "issued_at" => "issued_at",
            "nonce" => "nonce",
            "payload" => "payload",
            _ => "signature",
        }));
        assert_eq!(
            verifier.verify_at(&absent.to_string(), t).err(),
            expect,
            "{name} absent"
        );
        if name != "payload" {
            for empty in [Value::Null, Value::String(String::new())] {
                let mut e = full.clone();
                e[name] = empty;
                assert_eq!(
                    verifier.verify_at(&e.to_string(), t).err(),
                    expect,
                    "{name} empty"
                );
            }
        }
    }
    assert_eq!(
        RejectReason::MissingField("nonce").to_string(),
        "envelope has no nonce"
    );
    // A `null` payload is present (Go signs it as `null`).
    let text = signer
        .sign_envelope("t", "id", "2026-03-01T12:00:00Z", "null-payload", "null")
        .unwrap();
    assert_eq!(verifier.verify_at(&text, t).unwrap().payload.get(), "null");
}

#[test]
fn malformed_envelopes() {
    let signer = test_signer();
    let verifier = verifier_for(&signer);
    let t = noon();
    let good = signed(&signer, "g", t, "g");
    let cases = [
        String::new(),
        "   ".to_owned(),
        "not json".to_owned(),
        "null".to_owned(),
        "42".to_owned(),
        r#"["node_state_updated","g","2026-03-01T12:00:00Z","g",{},"sig"]"#.to_owned(),
        good[..good.len() - 1].to_owned(),
        format!("{good} trailing"),
        format!("{good}{{}}"),
        good.replacen("{", r#"{"nonce":"dup","#, 1),
        good.replacen(r#""event_id":"g""#, r#""event_id":7"#, 1),
        good.replacen(r#""2026-03-01T12:00:00Z""#, r#""2026-03-01 12:00:00""#, 1),
        good.replacen(r#""2026-03-01T12:00:00Z""#, r#""2026-03-01T12:00:60Z""#, 1),
        good.replacen(r#""event_id":"g""#, r#""event_id":"\x""#, 1),
        good.replacen(r#""event_id":"g""#, r#""event_id":"\ud800""#, 1),
        good.replacen(r#"{"metadata""#, r#"{"bad":"\q","metadata""#, 1),
        good.replacen(r#"{"metadata""#, r#"{"bad":"\u12","metadata""#, 1),
        good.replacen(r#"{"metadata""#, "{\"bad\":\"tab\there\",\"metadata\"", 1),
        good.replacen(r#"{"metadata""#, r#"{"bad":01,"metadata""#, 1),
        good.replacen(r#"{"metadata""#, r#"{"bad":NaN,"metadata""#, 1),
    ];
    for case in &cases {
        assert_eq!(
            verifier.verify_at(case, t).err(),
            Some(RejectReason::Malformed),
            "{case}"
        );
    }
    assert!(
        verifier.verify_at(&good, t).is_ok(),
        "none of the above recorded the nonce"
    );
    assert_eq!(RejectReason::Malformed.as_label(), "malformed");
}

#[test]
fn non_object_payloads_verify_and_canonicalise() {
    let signer = test_signer();
    let verifier = verifier_for(&signer);
    let t = noon();
    for (i, (payload, canonical)) in [
        (" [ 1 , \"a b\" ] ", r#"[1,"a b"]"#),
        ("\"<&>\"", r#""\u003c\u0026\u003e""#),
        ("-0.0e-0", "-0.0e-0"),
        ("true", "true"),
        ("null", "null"),
    ]
    .into_iter()
    .enumerate()
    {
        let text = signer
            .sign_envelope(
                "t",
                "id",
                "2026-03-01T12:00:00Z",
                &format!("np{i}"),
                payload,
            )
            .unwrap();
        let env = Envelope::parse(&text).unwrap();
        let bytes = env.canonical_bytes().unwrap();
        let want = format!(
            r#"{{"event_type":"t","event_id":"id","issued_at":"2026-03-01T12:00:00Z","nonce":"np{i}","payload":{canonical}}}"#
        );
        assert_eq!(String::from_utf8(bytes).unwrap(), want);
        assert_eq!(
            verifier.verify_at(&text, t).unwrap().payload.get(),
            payload.trim()
        );
    }
}

#[test]
fn huge_numbers_and_escapes_stay_verbatim() {
    let signer = test_signer();
    let verifier = verifier_for(&signer);
    let payload = r#"{"n":[1e400,-1E-400,123456789012345678901234567890,0.10000000000000000000001,-0,1.0],"s":"\u00e9\/\ud83d\ude00 \"q\" \\ \b\f\n\r\t é"}"#;
    let text = signer
        .sign_envelope("t", "id", "2026-03-01T12:00:00Z", "huge", payload)
        .unwrap();
    let env = Envelope::parse(&text).unwrap();
    let canonical = String::from_utf8(env.canonical_bytes().unwrap()).unwrap();
    assert!(
        canonical.ends_with(&format!(",\"payload\":{payload}}}")),
        "{canonical}"
    );
    assert_eq!(
        verifier.verify_at(&text, noon()).unwrap().payload.get(),
        payload
    );
}

#[test]
fn signing_keys_parsing() {
    let a = test_signer().public_key_b64();
    let (other, _) = Signer::generate().unwrap();
    let b = other.public_key_b64();
    let set = KeySet::from_signing_keys(&SigningKeys {
        current: a.clone(),
        previous: b.clone(),
        transition_expires: "2026-03-01T13:00:00.5+01:00".to_owned(),
    })
    .unwrap();
    assert_eq!(set.current().to_base64(), a);
    let (prev, expires) = set.previous().unwrap();
    assert_eq!(prev, other.public_key());
    assert_eq!(expires, noon() + Duration::from_millis(500));

    let no_expiry = KeySet::from_signing_keys(&SigningKeys {
        current: a.clone(),
        previous: b.clone(),
        transition_expires: String::new(),
    })
    .unwrap();
    assert_eq!(
        no_expiry.previous(),
        None,
        "a previous key without expiry is not trusted"
    );

    let err = |keys: SigningKeys| KeySet::from_signing_keys(&keys).unwrap_err();
    assert!(matches!(
        err(SigningKeys::default()),
        SigningKeyError::MissingCurrent
    ));
    assert!(matches!(
        err(SigningKeys {
            current: "%%%".into(),
            ..Default::default()
        }),
        SigningKeyError::Base64
    ));
    assert!(matches!(
        err(SigningKeys {
            current: STANDARD.encode([1u8; 31]),
            ..Default::default()
        }),
        SigningKeyError::Length(31)
    ));
    assert!(matches!(
        err(SigningKeys {
            current: a.clone(),
            previous: b.clone(),
            transition_expires: "soon".into()
        }),
        SigningKeyError::BadExpiry(_)
    ));
    assert!(matches!(
        err(SigningKeys {
            current: a.clone(),
            previous: "x".into(),
            transition_expires: "2026-03-01T13:00:00Z".into()
        }),
        SigningKeyError::Base64
    ));
    assert!(
        PublicKey::from_base64(a.trim_end_matches('=')).is_err(),
        "padding required"
    );
    assert_eq!(format!("{:?}", set.current()), format!("PublicKey({a})"));
}

#[test]
fn reject_reason_labels() {
    let all = [
        RejectReason::Malformed,
        RejectReason::MissingField("nonce"),
        RejectReason::BadSignature,
        RejectReason::Stale,
        RejectReason::Future,
        RejectReason::Replayed,
        RejectReason::NoKeys,
    ];
    let labels: Vec<_> = all.iter().map(RejectReason::as_label).collect();
    assert_eq!(
        labels,
        [
            "malformed",
            "missing_field",
            "bad_signature",
            "stale",
            "future",
            "replayed",
            "no_keys"
        ]
    );
}

/// Small deterministic PRNG (xorshift64*) so the fuzz tests need no extra crate.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn fuzz_envelope_parser_never_panics() {
    let signer = test_signer();
    let verifier = verifier_for(&signer);
    let t = noon();
    let good = signed(&signer, "fuzz", t, "fuzz").into_bytes();
    let alphabet = b"{}[]\":,\\ \t\nu0123456789abcdefe+-.<>&nulltrue\xe2\x80\xa8";
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for round in 0..20_000 {
        let bytes: Vec<u8> = if round % 2 == 0 {
            let mut m = good.clone();
            for _ in 0..=rng.below(4) {
                let i = rng.below(m.len());
                match rng.below(3) {
                    0 => m[i] = alphabet[rng.below(alphabet.len())],
                    1 => {
                        m.remove(i);
                    }
                    _ => m.insert(i, rng.next() as u8),
                }
            }
            m
        } else {
            (0..rng.below(64))
                .map(|_| alphabet[rng.below(alphabet.len())])
                .collect()
        };
        let text = String::from_utf8_lossy(&bytes);
        let _ = verifier.verify_at(&text, t);
        if let Ok(env) = Envelope::parse(&text) {
            let _ = env.canonical_bytes();
        }
    }
    // Unix epoch and far-off times do not upset the clock arithmetic.
    let _ = verifier.verify_at(&String::from_utf8_lossy(&good), UNIX_EPOCH);
    let old = signer
        .sign_envelope("t", "i", "0000-01-01T00:00:00Z", "o", "{}")
        .unwrap();
    assert_eq!(verifier.verify_at(&old, t).err(), Some(RejectReason::Stale));
    let far = signer
        .sign_envelope("t", "i", "9999-12-31T23:59:59.999999999-23:59", "f", "{}")
        .unwrap();
    assert_eq!(
        verifier.verify_at(&far, t).err(),
        Some(RejectReason::Future)
    );
}
