//! Caption cleaning, as OpenAI's `SimpleTokenizer` does it before tokenising.

/// Cleans a caption the way CLIP does: HTML entities decoded twice (so `&amp;amp;` becomes
/// `&`), whitespace runs collapsed to one space, the ends trimmed, and the text lowercased.
///
/// The reference first runs Python's `ftfy.fix_text`, which repairs mojibake and applies
/// Unicode NFC. There is no Rust port of ftfy, so that step is skipped: text that is already
/// well-formed (nearly all captions) tokenises exactly as in the reference; broken encodings
/// and decomposed accents may not.
pub fn clean(text: &str) -> String {
    let once = htmlize::unescape(text);
    let twice = htmlize::unescape(once.as_ref());
    let words: Vec<&str> = twice.split(is_space).filter(|w| !w.is_empty()).collect();
    // `str::to_lowercase` maps like Python's `str.lower`, final sigma included.
    words.join(" ").to_lowercase()
}

/// Python's notion of whitespace (`\s`, `str.strip`): Unicode White_Space plus the four
/// ASCII separators U+001C..U+001F, which Python counts and Rust does not.
fn is_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}
