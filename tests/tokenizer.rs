//! The text tokenizer: CLIP's ids against known values and an independent implementation,
//! row framing and truncation, EOT positions, BPE trained on a small corpus, and bad input.

use std::path::PathBuf;
use std::sync::OnceLock;

use msclip::text::{Tokenizer, Truncation, clean, eot_positions};

const CONTEXT: usize = 77;

/// One CLIP tokenizer for the whole binary: building it parses 48,894 merges.
fn clip() -> &'static Tokenizer {
    static CLIP: OnceLock<Tokenizer> = OnceLock::new();
    CLIP.get_or_init(|| Tokenizer::clip().expect("CLIP tokenizer"))
}

/// `ids` followed by zeros up to `len`.
fn padded(ids: &[u32], len: usize) -> Vec<u32> {
    let mut row = ids.to_vec();
    row.resize(len, 0);
    row
}

/// A fresh, empty directory for one test's files.
fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("msclip-tokenizer-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch directory");
    dir
}

/// The error message, checked to mention every fragment.
fn expect_err<T: std::fmt::Debug>(result: msclip::Result<T>, fragments: &[&str]) {
    let msg = result.expect_err("must fail").to_string();
    for f in fragments {
        assert!(msg.contains(f), "error {msg:?} does not mention {f:?}");
    }
}

#[test]
fn clip_vocabulary_layout() {
    let tok = clip();
    assert_eq!((tok.vocab_size(), tok.sot(), tok.eot()), (49408, 49406, 49407));
    assert_eq!(tok.encode("<|startoftext|> <|endoftext|>").unwrap(), [49406, 49407]);
}

#[test]
fn clip_golden_vectors() {
    let tok = clip();
    let row = |text| tok.tokenize(text, CONTEXT, Truncation::Reference).unwrap();
    assert_eq!(row("a photo of a dog."), padded(&[49406, 320, 1125, 539, 320, 1929, 269, 49407], CONTEXT));
    assert_eq!(row("A person riding a motorcycle"), padded(&[49406, 320, 2533, 6765, 320, 10297, 49407], CONTEXT));
    assert_eq!(tok.encode("a photo of a red circle.").unwrap(), [320, 1125, 539, 320, 736, 7117, 269]);
    assert_eq!(tok.encode("two blue squares on the left").unwrap(), [1237, 1746, 26972, 525, 518, 1823]);
}

#[test]
fn cleaning_unescapes_collapses_and_lowercases() {
    assert_eq!(clean("  Fish &amp;amp; Chips\t\n&lt;b&gt;  "), "fish & chips <b>");
    assert_eq!(clean("ΟΔΟΣ\u{1f}Café"), "οδος café");
    let tok = clip();
    assert_eq!(tok.encode("A  DOG &amp; a cat").unwrap(), tok.encode("a dog & a cat").unwrap());
}

/// Deterministic, varied captions: contractions, digits, punctuation runs, accented and
/// non-Latin letters, emoji, case, and irregular whitespace.
fn varied_captions() -> Vec<String> {
    const PIECES: &[&str] = &[
        "a",
        "photo",
        "Of",
        "DOG",
        "cat's",
        "don't",
        "we're",
        "I'll",
        "they've",
        "I'm",
        "she'd",
        "café",
        "naïve",
        "Zürich",
        "straße",
        "ÉCOLE",
        "İstanbul",
        "ΟΔΟΣ",
        "Ελλάδα",
        "москва",
        "東京",
        "日本語",
        "한국어",
        "🦀",
        "👍🏽",
        "rock'n'roll",
        "e-mail",
        "U.S.A.",
        "3.14",
        "2024",
        "100%",
        "$5",
        "#hashtag",
        "@user",
        "...",
        "?!",
        "—",
        "«quoted»",
        "(parens)",
        "[x]",
        "x^2",
        "snake_case",
        "CamelCase",
        "HTTP",
        "١٢٣",
        "½",
        "naïveté",
        "O'Brien",
        "''",
        "'s",
        "motorcycle",
        "riding",
        "a red circle.",
        "two blue squares",
    ];
    const GAPS: &[&str] = &[" ", "  ", "\t", "\n ", ", ", ". ", "", "-", " \u{a0} "];
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = |n: usize| {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (state >> 33) as usize % n
    };
    let mut captions: Vec<String> = PIECES.iter().map(|p| p.to_string()).collect();
    for _ in 0..300 {
        let mut caption = String::new();
        for _ in 0..1 + next(8) {
            caption.push_str(GAPS[next(GAPS.len())]);
            caption.push_str(PIECES[next(PIECES.len())]);
        }
        captions.push(caption);
    }
    captions
}

#[test]
fn clip_matches_instant_clip_tokenizer() {
    let ours = clip();
    let theirs = instant_clip_tokenizer::Tokenizer::new();
    for caption in varied_captions() {
        let mut tokens = Vec::new();
        theirs.encode(&caption, &mut tokens);
        let want: Vec<u32> = tokens.into_iter().map(|t| u32::from(t.to_u16())).collect();
        assert_eq!(ours.encode(&caption).unwrap(), want, "caption {caption:?}");
    }
}

#[test]
fn decode_inverts_encode_up_to_spacing() {
    let tok = clip();
    let row = tok.tokenize("A photo of a DOG.", CONTEXT, Truncation::Reference).unwrap();
    assert_eq!(tok.decode(&row).unwrap(), "a photo of a dog .");
    for caption in varied_captions() {
        let ids = tok.encode(&caption).unwrap();
        assert_eq!(tok.encode(&tok.decode(&ids).unwrap()).unwrap(), ids, "caption {caption:?}");
    }
}

#[test]
fn short_captions_are_framed_and_zero_padded() {
    let tok = clip();
    let ids = tok.encode("a dog").unwrap();
    for truncation in [Truncation::Reference, Truncation::ForceEot] {
        let row = tok.tokenize("a dog", 8, truncation).unwrap();
        assert_eq!(row, [49406, ids[0], ids[1], 49407, 0, 0, 0, 0]);
        assert_eq!(eot_positions(&row, 8).unwrap(), [3]);
    }
    // Exactly full: both modes keep the EOT.
    assert_eq!(tok.tokenize("a dog", 4, Truncation::Reference).unwrap(), [49406, ids[0], ids[1], 49407]);
    assert_eq!(tok.tokenize("", 2, Truncation::Reference).unwrap(), [49406, 49407]);
}

#[test]
fn long_captions_truncate_as_reference_or_open_clip() {
    let tok = clip();
    let long = "a red circle left of a blue square ".repeat(20);
    let ids = tok.encode(&long).unwrap();
    assert!(ids.len() > CONTEXT);

    let reference = tok.tokenize(&long, CONTEXT, Truncation::Reference).unwrap();
    assert_eq!(reference.len(), CONTEXT);
    assert_eq!(reference[0], 49406);
    assert_eq!(&reference[1..], &ids[..CONTEXT - 1]);
    assert!(!reference.contains(&49407), "the reference loses EOT");
    assert_eq!(eot_positions(&reference, CONTEXT).unwrap(), [0], "a row without EOT pools at SOT");

    let forced = tok.tokenize(&long, CONTEXT, Truncation::ForceEot).unwrap();
    assert_eq!(&forced[..CONTEXT - 1], &reference[..CONTEXT - 1]);
    assert_eq!(forced[CONTEXT - 1], 49407);
    assert_eq!(eot_positions(&forced, CONTEXT).unwrap(), [CONTEXT - 1]);
}

#[test]
fn batches_are_rows_of_tokenize() {
    let tok = clip();
    let long = "two blue squares on the left ".repeat(30);
    let texts = ["a photo of a dog.", "", long.as_str(), "A person riding a motorcycle"];
    for truncation in [Truncation::Reference, Truncation::ForceEot] {
        let batch = tok.tokenize_batch(&texts, CONTEXT, truncation).unwrap();
        let rows: Vec<u32> = texts.iter().flat_map(|t| tok.tokenize(t, CONTEXT, truncation).unwrap()).collect();
        assert_eq!(batch, rows);
    }
    let batch = tok.tokenize_batch(&texts, CONTEXT, Truncation::Reference).unwrap();
    assert_eq!(eot_positions(&batch, CONTEXT).unwrap(), [7, 1, 0, 6]);
    assert!(tok.tokenize_batch(&[], CONTEXT, Truncation::Reference).unwrap().is_empty());
}

#[test]
fn bad_contexts_and_shapes_are_errors() {
    let tok = clip();
    expect_err(tok.tokenize("a dog", 1, Truncation::ForceEot), &["tokenize", "context 1"]);
    expect_err(tok.tokenize_batch(&["a dog"], 0, Truncation::Reference), &["tokenize_batch", "context 0"]);
    expect_err(eot_positions(&[1, 2, 3], 2), &["eot_positions", "3 ids", "context 2"]);
    expect_err(eot_positions(&[1, 2], 0), &["eot_positions", "context 0"]);
    expect_err(tok.decode(&[320, 49408]), &["decode", "49408"]);
}

/// Shapes-world captions: few words, many repeats, as a small training set looks.
fn shape_captions() -> Vec<String> {
    let colours = ["red", "green", "blue", "yellow", "purple", "orange"];
    let shapes = ["circle", "square", "triangle", "star", "hexagon"];
    let places = ["on the left", "on the right", "at the top", "at the bottom", "in the middle"];
    let mut captions = Vec::new();
    for (i, colour) in colours.iter().enumerate() {
        for (j, shape) in shapes.iter().enumerate() {
            for (k, place) in places.iter().enumerate() {
                let count = ["a", "two", "three"][(i + j + k) % 3];
                let plural = if count == "a" { "" } else { "s" };
                captions.push(format!("{count} {colour} {shape}{plural} {place}."));
            }
        }
    }
    captions
}

fn train(vocab_size: usize) -> Tokenizer {
    let captions = shape_captions();
    Tokenizer::train_bpe(captions.iter().map(String::as_str), vocab_size).expect("training")
}

#[test]
fn trained_bpe_layout_and_round_trip() {
    let tok = train(560);
    assert_eq!((tok.vocab_size(), tok.sot(), tok.eot()), (560, 558, 559));
    assert_eq!(tok.encode("the").unwrap().len(), 1, "frequent words become one token");
    for caption in shape_captions().iter().chain(&varied_captions()) {
        let ids = tok.encode(caption).unwrap();
        assert!(ids.iter().all(|&id| id < tok.sot()), "caption {caption:?}: {ids:?}");
        let text = tok.decode(&ids).unwrap();
        assert_eq!(text, clip().decode(&clip().encode(caption).unwrap()).unwrap(), "caption {caption:?}");
        assert_eq!(tok.encode(&text).unwrap(), ids);
    }
    // Words never seen in training spell out through the byte symbols.
    let unseen = "Zebra Ω 東京 🦀";
    assert_eq!(tok.decode(&tok.encode(unseen).unwrap()).unwrap(), "zebra ω 東京 🦀");
    let caption = "a red star on the left.";
    let row = tok.tokenize(caption, 32, Truncation::Reference).unwrap();
    assert_eq!((row[0], eot_positions(&row, 32).unwrap()[0]), (558, tok.encode(caption).unwrap().len() + 1));
}

#[test]
fn training_stops_when_the_corpus_runs_out_of_pairs() {
    let tok = train(10_000);
    let size = tok.vocab_size();
    assert!(size < 10_000, "{size}");
    assert_eq!((tok.sot(), tok.eot()), (size as u32 - 2, size as u32 - 1));
    for word in shape_captions().iter().flat_map(|c| c.trim_end_matches('.').split(' ')) {
        assert_eq!(tok.encode(word).unwrap().len(), 1, "{word:?} is fully merged");
    }
}

#[test]
fn trained_bpe_is_deterministic_and_saves() {
    let dir = scratch("saves");
    let (first, second) = (train(560), train(560));
    let (a, b) = (dir.join("a.json"), dir.join("b.json"));
    first.save(&a).unwrap();
    second.save(&b).unwrap();
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap(), "same corpus, same vocabulary");

    let loaded = Tokenizer::from_file(&a).unwrap();
    assert_eq!((loaded.vocab_size(), loaded.sot(), loaded.eot()), (560, 558, 559));
    let captions: Vec<&str> = ["a green hexagon at the top.", "Unseen words, 42!"].into();
    assert_eq!(
        loaded.tokenize_batch(&captions, 24, Truncation::ForceEot).unwrap(),
        first.tokenize_batch(&captions, 24, Truncation::ForceEot).unwrap()
    );
    let leftovers: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(leftovers.len(), 2, "no temporary files left: {leftovers:?}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn clip_saves_and_loads() {
    let dir = scratch("clip");
    let path = dir.join("tokenizer.json");
    clip().save(&path).unwrap();
    let loaded = Tokenizer::from_file(&path).unwrap();
    let texts: Vec<&str> = ["a photo of a dog.", "don't 3.14 Zürich 🦀"].into();
    assert_eq!(
        loaded.tokenize_batch(&texts, CONTEXT, Truncation::Reference).unwrap(),
        clip().tokenize_batch(&texts, CONTEXT, Truncation::Reference).unwrap()
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn training_too_small_a_vocabulary_is_an_error() {
    expect_err(Tokenizer::train_bpe(["a dog"], 513), &["vocab_size 513", "514"]);
    // The floor itself works: bytes only, no merges.
    let bytes_only = Tokenizer::train_bpe(["a dog"], 514).unwrap();
    assert_eq!(bytes_only.encode("dog").unwrap().len(), 3);
}

/// A minimal valid tokenizer.json with the given word-level vocabulary.
fn word_level_json(vocab: &str) -> String {
    format!(
        r#"{{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],"normalizer":null,
        "pre_tokenizer":null,"post_processor":null,"decoder":null,
        "model":{{"type":"WordLevel","vocab":{{{vocab}}},"unk_token":"a"}}}}"#
    )
}

#[test]
fn bad_tokenizer_files_are_clear_errors() {
    let dir = scratch("bad");
    let missing = dir.join("missing.json");
    expect_err(Tokenizer::from_file(&missing), &["missing.json"]);

    let corrupt = dir.join("corrupt.json");
    std::fs::write(&corrupt, "{ \"model\": ").unwrap();
    expect_err(Tokenizer::from_file(&corrupt), &["corrupt.json", "not a tokenizer.json"]);

    let no_specials = dir.join("no_specials.json");
    std::fs::write(&no_specials, word_level_json(r#""a":0,"b":1"#)).unwrap();
    expect_err(Tokenizer::from_file(&no_specials), &["no_specials.json", "<|startoftext|>"]);

    let eot_not_last = dir.join("eot_not_last.json");
    std::fs::write(&eot_not_last, word_level_json(r#""<|startoftext|>":0,"<|endoftext|>":1,"a":2"#)).unwrap();
    expect_err(Tokenizer::from_file(&eot_not_last), &["eot_not_last.json", "largest id is 2"]);

    let minimal = dir.join("minimal.json");
    std::fs::write(&minimal, word_level_json(r#""a":0,"<|startoftext|>":1,"<|endoftext|>":2"#)).unwrap();
    let tok = Tokenizer::from_file(&minimal).unwrap();
    assert_eq!((tok.vocab_size(), tok.sot(), tok.eot()), (3, 1, 2));

    expect_err(clip().save(&dir.join("no/such/dir/tokenizer.json")), &["no/such/dir"]);
    std::fs::remove_dir_all(dir).unwrap();
}
