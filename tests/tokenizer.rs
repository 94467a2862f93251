//! Token ids equal diffusers' (transformers' CLIPTokenizer) for every reference prompt and tokenizer.

mod common;

use dfast::pipeline::tokenizer::ClipTokenizer;

#[test]
fn token_ids_match_diffusers() {
    let refs = common::read_json(&common::references().join("tokens.json"));
    let mut checked = 0;
    for (name, rows) in refs.as_object().expect("object of tokenizers") {
        let tok = ClipTokenizer::from_dir(&common::root().join("models").join(name)).expect("tokenizer loads");
        for row in rows.as_array().unwrap() {
            let prompt = row["prompt"].as_str().unwrap();
            let want: Vec<i64> = row["input_ids"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
            let got = tok.encode(prompt).unwrap();
            assert_eq!(got.ids, want, "{name}: prompt {prompt:?}");
            assert_eq!(got.truncated, row["truncated"].as_bool().unwrap(), "{name}: truncation flag of {prompt:?}");
            checked += 1;
        }
    }
    assert_eq!(checked, 30, "three tokenizers x ten prompts");
}

#[test]
fn sdxl_second_tokenizer_pads_with_exclamation_mark() {
    let tok = ClipTokenizer::from_dir(&common::model("tiny-sdxl").join("tokenizer_2")).unwrap();
    let ids = tok.encode("a cat").unwrap().ids;
    assert_eq!(ids.len(), 77);
    assert_eq!(*ids.last().unwrap(), 0, "`!` is id 0");
}
