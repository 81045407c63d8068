//! Expected outputs written by hand from the Python rules' definitions (fastai 2.8.12,
//! CPython 3.11 `re`, `html` and `str` semantics).

use super::*;

fn apply_one(rule: Rule, text: &str) -> String {
    RuleSet {
        name: "test".to_string(),
        rules: vec![rule],
    }
    .apply(text)
}

#[test]
fn fix_html_literal_replacements() {
    assert_eq!(apply_one(Rule::FixHtml, "it#39;s"), "it's");
    assert_eq!(apply_one(Rule::FixHtml, "x<br /><br />y"), "x\n\ny");
    assert_eq!(apply_one(Rule::FixHtml, "<unk> \\n"), "xxunk \n");
    assert_eq!(apply_one(Rule::FixHtml, "wait..."), "wait \u{2026}");
    // `amp;` goes first, so `&amp;` becomes `&&`, which unescape leaves alone.
    assert_eq!(apply_one(Rule::FixHtml, "a &amp; b"), "a && b");
}

#[test]
fn fix_html_chained_replacements() {
    // ` @.@ ` turns `. @.@ .` into `...`, which the later ellipsis rule rewrites.
    assert_eq!(apply_one(Rule::FixHtml, "x . @.@ . y"), "x  \u{2026} y");
}

#[test]
fn fix_html_named_references() {
    assert_eq!(
        apply_one(Rule::FixHtml, "&copy 2020 &notit; &#x27;q&#39;"),
        "\u{a9} 2020 \u{ac}it; 'q&'"
    );
    assert_eq!(apply_one(Rule::FixHtml, "&abc; & &#;"), "&abc; & &#;");
    assert_eq!(apply_one(Rule::FixHtml, "&lt&gt"), "<>");
    assert_eq!(apply_one(Rule::FixHtml, "&ampx"), "&x");
    assert_eq!(apply_one(Rule::FixHtml, "&frac12;"), "\u{bd}");
    assert_eq!(apply_one(Rule::FixHtml, "&fjlig;"), "fj");
}

#[test]
fn fix_html_numeric_references() {
    assert_eq!(
        apply_one(Rule::FixHtml, "&#128; &#0; &#1; &#xD800; &#99999999999;"),
        "\u{20ac} \u{fffd}  \u{fffd} \u{fffd}"
    );
    assert_eq!(apply_one(Rule::FixHtml, "&#65&#x42;&#X43"), "ABC");
    assert_eq!(apply_one(Rule::FixHtml, "&#xFFFE;&#11;|"), "|");
    assert_eq!(apply_one(Rule::FixHtml, "&#x1F600;"), "\u{1f600}");
}

#[test]
fn replace_rep_character_runs() {
    assert_eq!(apply_one(Rule::ReplaceRep, "cool!!!"), "cool xxrep 3 ! ");
    assert_eq!(apply_one(Rule::ReplaceRep, "aa"), "aa");
    assert_eq!(apply_one(Rule::ReplaceRep, "   "), "   ");
    assert_eq!(
        apply_one(Rule::ReplaceRep, "\u{1f600}\u{1f600}\u{1f600}"),
        " xxrep 3 \u{1f600} "
    );
    assert_eq!(apply_one(Rule::ReplaceRep, "zzzzz"), " xxrep 5 z ");
}

#[test]
fn replace_wrep_word_runs() {
    assert_eq!(
        apply_one(Rule::ReplaceWrep, "word word word"),
        " xxwrep 3 word "
    );
    assert_eq!(apply_one(Rule::ReplaceWrep, "x y y y."), "x xxwrep 3 y .");
    assert_eq!(
        apply_one(Rule::ReplaceWrep, "go go\ngo\n\ngo now"),
        " xxwrep 4 go  now"
    );
    assert_eq!(apply_one(Rule::ReplaceWrep, "b b"), "b b");
}

#[test]
fn replace_wrep_backtracks_one_copy() {
    // The last `a` is the start of `ab`, so the match keeps only three copies.
    assert_eq!(apply_one(Rule::ReplaceWrep, "a a a ab"), " xxwrep 3 a  ab");
}

#[test]
fn replace_wrep_consumes_following_space() {
    // The first match takes the space before `b`, so `b b b` has no leading whitespace.
    assert_eq!(
        apply_one(Rule::ReplaceWrep, "a a a b b b"),
        " xxwrep 3 a  b b b"
    );
}

#[test]
fn spec_add_spaces_around_specials() {
    assert_eq!(apply_one(Rule::SpecAddSpaces, "a/b#c\\d"), "a / b # c \\ d");
    assert_eq!(apply_one(Rule::SpecAddSpaces, "plain"), "plain");
}

#[test]
fn rm_useless_spaces_only_ascii_spaces() {
    assert_eq!(
        apply_one(Rule::RmUselessSpaces, "a   b  c\t\td"),
        "a b c\t\td"
    );
    assert_eq!(
        apply_one(Rule::RmUselessSpaces, "a\u{a0}\u{a0}b"),
        "a\u{a0}\u{a0}b"
    );
}

#[test]
fn replace_all_caps_tokens_in_text() {
    assert_eq!(
        apply_one(Rule::ReplaceAllCaps, "I AM SO HAPPY A1 McDonald's U.S.A."),
        "i xxup am xxup so xxup happy xxup a1 McDonald's xxup u.s.a."
    );
    assert_eq!(
        apply_one(Rule::ReplaceAllCaps, "CAF\u{c9} \u{c9}COLE"),
        "xxup caf\u{e9} \u{c9}COLE"
    );
}

#[test]
fn replace_maj_tokens_in_text() {
    assert_eq!(
        apply_one(Rule::ReplaceMaj, "Hello World I McDonald's Caf\u{e9}"),
        "xxmaj hello xxmaj world i McDonald's xxmaj caf\u{e9}"
    );
    assert_eq!(apply_one(Rule::ReplaceMaj, "HELLO"), "HELLO");
}

#[test]
fn caps_rules_split_on_python_whitespace() {
    // U+001F is whitespace for Python, U+200B is not.
    assert_eq!(apply_one(Rule::ReplaceMaj, "a\u{1f}Bc"), "a\u{1f}xxmaj bc");
    assert_eq!(apply_one(Rule::ReplaceMaj, "a\u{200b}Bc"), "a\u{200b}Bc");
}

#[test]
fn lowercase_adds_bos_and_strips() {
    assert_eq!(
        apply_one(
            Rule::Lowercase,
            "  Hello \u{39f}\u{394}\u{39f}\u{3a3}\u{a0}"
        ),
        "xxbos hello \u{3bf}\u{3b4}\u{3bf}\u{3c2}"
    );
    assert_eq!(apply_one(Rule::Lowercase, "\u{1c}X\u{1f}"), "xxbos x");
    assert_eq!(apply_one(Rule::Lowercase, "\u{130}"), "xxbos i\u{307}");
}

#[test]
fn lowercase_final_sigma() {
    assert_eq!(
        apply_one(Rule::Lowercase, "\u{3a3}\u{391}\u{3a3}"),
        "xxbos \u{3c3}\u{3b1}\u{3c2}"
    );
    // A case-ignorable apostrophe between letters keeps the medial form.
    assert_eq!(apply_one(Rule::Lowercase, "A\u{3a3}'B"), "xxbos a\u{3c3}'b");
    assert_eq!(apply_one(Rule::Lowercase, "\u{3a3}"), "xxbos \u{3c3}");
}

#[test]
fn lowercase_keeps_unicode_16_letters() {
    // U+A7CB was added in Unicode 16, after the Unicode 14 of Python 3.11.
    assert_eq!(apply_one(Rule::Lowercase, "\u{a7cb}"), "xxbos \u{a7cb}");
}

#[test]
fn fastai2_full_document() {
    let text = "This movie is GREAT!!! I loved it... <br /><br />10/10 &amp; more more more";
    assert_eq!(
        RuleSet::fastai2().apply(text),
        "xxbos xxmaj this movie is xxup great xxrep 3 ! i loved it \u{2026} \n\n10 / 10 && xxwrep 3 more"
    );
}

#[test]
fn none_passes_text_through() {
    assert_eq!(
        RuleSet::none().apply("  Hello &amp; WORLD  "),
        "  Hello &amp; WORLD  "
    );
    let mut tokens = vec!["A B".to_string()];
    RuleSet::none().apply_to_tokens(&mut tokens);
    assert_eq!(tokens, vec!["A B".to_string()]);
}

#[test]
fn replace_space_in_tokens() {
    let mut tokens = vec!["a".to_string(), "\n ".to_string(), " ".to_string()];
    RuleSet::fastai2().apply_to_tokens(&mut tokens);
    assert_eq!(tokens, vec!["a", "\n\u{2581}", "\u{2581}"]);
}

#[test]
fn fastai1_string_rules() {
    assert_eq!(apply_one(Rule::AddBos, "Hello"), "xxbos Hello");
    assert_eq!(apply_one(Rule::ReplaceRepV1, "cool!!!"), "cool!!!");
    assert_eq!(apply_one(Rule::ReplaceRepV1, "cool!!!!"), "cool xxrep 4 ! ");
    assert_eq!(
        apply_one(Rule::SpecAddSpacesV1, "a/b\nc\\d"),
        "a / b \n c\\d"
    );
    assert_eq!(apply_one(Rule::FixHtmlV1, "a\\b wait..."), "a \\ b wait...");
    assert_eq!(apply_one(Rule::FixHtmlV1, "&amp;  x @,@ y"), "&& x,y");
    assert_eq!(apply_one(Rule::FixHtmlV1, "1 @,@ 000"), "1,000");
}

#[test]
fn fastai1_replace_wrep() {
    assert_eq!(
        apply_one(Rule::ReplaceWrepV1, "a a a a b"),
        " xxwrep 4 a  b"
    );
    assert_eq!(apply_one(Rule::ReplaceWrepV1, "a a a b"), "a a a b");
    // fastai 1.0 counts whitespace-separated pieces, so units without spaces count as one.
    assert_eq!(apply_one(Rule::ReplaceWrepV1, "a,a,a,a,"), " xxwrep 2 a, ");
    // `\b` forbids a start inside a word.
    assert_eq!(apply_one(Rule::ReplaceWrepV1, "xa a a a "), "xa a a a ");
}

#[test]
fn fastai1_token_rules() {
    let mut tokens: Vec<String> = ["xxbos", "HELLO", "World", "I", "McDonald", "A1", ""]
        .iter()
        .map(|token| token.to_string())
        .collect();
    RuleSet::fastai1().apply_to_tokens(&mut tokens);
    let expected = [
        "xxbos", "xxup", "hello", "xxmaj", "world", "i", "mcdonald", "xxup", "a1",
    ];
    assert_eq!(tokens, expected);
}

#[test]
fn fastai1_full_document() {
    assert_eq!(
        RuleSet::fastai1().apply("Great!!!! film film film film film.<br />5/5"),
        "xxbos Great xxrep 4 ! xxwrep 4 film film. \n 5 / 5"
    );
}

#[test]
fn by_name_known_and_unknown() {
    assert_eq!(RuleSet::by_name("fastai"), Ok(RuleSet::fastai2()));
    assert_eq!(RuleSet::by_name("fastai2"), Ok(RuleSet::fastai2()));
    assert_eq!(RuleSet::by_name("fastai1"), Ok(RuleSet::fastai1()));
    assert_eq!(RuleSet::by_name("none"), Ok(RuleSet::none()));
    assert_eq!(
        RuleSet::by_name("spacy"),
        Err(UnknownRuleSetError {
            name: "spacy".to_string()
        })
    );
}

#[test]
fn rule_serde_names() {
    let json = serde_json::to_string(&RuleSet::fastai1().rules).unwrap_or_default();
    assert_eq!(
        json,
        r#"["add_bos","fix_html_v1","replace_rep_v1","replace_wrep_v1","spec_add_spaces_v1","rm_useless_spaces","replace_all_caps_v1","deal_caps"]"#
    );
}
