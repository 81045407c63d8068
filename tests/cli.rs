//! The `ulmfit` binary on small files made by each test.

use std::path::Path;
use std::process::{Command, Output};

use ulmfit::text::token_file::TokenFile;
use ulmfit::text::vocab::Vocab;

fn ulmfit(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ulmfit"))
        .args(args)
        .output()
        .expect("the binary starts")
}

fn stdout_lines(output: &Output) -> Vec<serde_json::Value> {
    assert!(
        output.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone())
        .expect("UTF-8 output")
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect()
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("UTF-8 path")
}

#[test]
fn tokenize_keeps_empty_lines_and_order() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let input = dir.path().join("docs.txt");
    // 10,001 lines cross several parallel chunks; every 1000th line is empty.
    let text: String = (0..10_001)
        .map(|i| {
            if i % 1000 == 0 {
                String::new()
            } else {
                format!("Line {i}")
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&input, text + "\n").expect("write input");
    let lines = stdout_lines(&ulmfit(&["tokenize", path_str(&input)]));
    assert_eq!(lines.len(), 10_001);
    assert_eq!(lines[0], serde_json::json!({ "tokens": ["xxbos"] }));
    assert_eq!(
        lines[4097],
        serde_json::json!({ "tokens": ["xxbos", "xxmaj", "line", "4097"] })
    );
    assert_eq!(lines[5000], serde_json::json!({ "tokens": ["xxbos"] }));
    assert_eq!(lines[10_000], serde_json::json!({ "tokens": ["xxbos"] }));
}

#[test]
fn tokenize_rules_none_adds_nothing() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let input = dir.path().join("docs.txt");
    std::fs::write(&input, "I LOVED it!!!!\n").expect("write input");
    let lines = stdout_lines(&ulmfit(&["tokenize", "--rules", "none", path_str(&input)]));
    assert_eq!(
        lines,
        vec![serde_json::json!({ "tokens": ["I", "LOVED", "it", "!", "!", "!", "!"] })]
    );
}

#[test]
fn tokenize_jsonl_reads_text_field() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let input = dir.path().join("docs.jsonl");
    std::fs::write(
        &input,
        "{\"id\": 7, \"text\": \"Don't\", \"label\": \"pos\"}\n{\"text\": \"\"}\n",
    )
    .expect("write input");
    let lines = stdout_lines(&ulmfit(&["tokenize", "--jsonl", path_str(&input)]));
    assert_eq!(
        lines,
        vec![
            serde_json::json!({ "tokens": ["xxbos", "xxmaj", "do", "n't"] }),
            serde_json::json!({ "tokens": ["xxbos"] }),
        ]
    );
}

#[test]
fn tokenize_jsonl_missing_text_names_line() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let input = dir.path().join("docs.jsonl");
    std::fs::write(&input, "{\"text\": \"fine\"}\n{\"body\": \"no text\"}\n").expect("write");
    let output = ulmfit(&["tokenize", "--jsonl", path_str(&input)]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("docs.jsonl:2:"), "{stderr}");
    assert!(stderr.contains("missing \"text\" field"), "{stderr}");
}

#[test]
fn tokenize_invalid_utf8_names_line_and_hint() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let input = dir.path().join("latin.txt");
    std::fs::write(&input, b"fine\ncaf\xe9 noir\n").expect("write input");
    let output = ulmfit(&["tokenize", path_str(&input)]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("latin.txt:2:"), "{stderr}");
    assert!(stderr.contains("--encoding latin1"), "{stderr}");

    let lines = stdout_lines(&ulmfit(&[
        "tokenize",
        "--encoding",
        "latin1",
        path_str(&input),
    ]));
    assert_eq!(
        lines[1],
        serde_json::json!({ "tokens": ["xxbos", "café", "noir"] })
    );
}

#[test]
fn tokenize_missing_file_is_an_error() {
    let output = ulmfit(&["tokenize", "/nonexistent/input.txt"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("/nonexistent/input.txt"), "{stderr}");
}

/// Writes a class-per-folder corpus: `pos/` and `neg/` with a few reviews each.
fn write_folder_corpus(root: &Path) {
    for (class, texts) in [
        (
            "pos",
            ["A great film.", "Great acting, great film!", "I loved it."],
        ),
        (
            "neg",
            ["A bad film.", "Bad acting.", "I hated it, a bad film."],
        ),
    ] {
        let dir = root.join(class);
        std::fs::create_dir_all(&dir).expect("class folder");
        for (i, text) in texts.iter().enumerate() {
            std::fs::write(dir.join(format!("{i}.txt")), text).expect("write review");
        }
    }
}

#[test]
fn vocab_build_then_numericalize_folder() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let corpus = dir.path().join("train");
    write_folder_corpus(&corpus);
    let vocab_dir = dir.path().join("vocab");
    let output = ulmfit(&[
        "vocab",
        "build",
        "--corpus",
        path_str(&corpus),
        "--out",
        path_str(&vocab_dir),
        "--min-freq",
        "2",
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let vocab = Vocab::load(&vocab_dir).expect("saved vocabulary");
    // Counts: "." 5, film 4, a 3, bad 3, great 3, "," 2, acting 2, i 2, it 2, the rest 1.
    // A single capital letter gets no xxmaj, so "A" is "a". Ties go by bytes, and the
    // special tokens (xxbos 6, xxmaj 2) come first without being repeated.
    let words: Vec<&str> = vocab.tokens()[9..].iter().map(String::as_str).collect();
    assert_eq!(
        words,
        [".", "film", "a", "bad", "great", ",", "acting", "i", "it"]
    );

    let token_file = dir.path().join("train.tok");
    let output = ulmfit(&[
        "numericalize",
        "--vocab",
        path_str(&vocab_dir),
        "--corpus",
        path_str(&corpus),
        "--out",
        path_str(&token_file),
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let file = TokenFile::open(&token_file, Some(&vocab.content_hash())).expect("token file");
    assert_eq!(file.n_documents(), 6);
    assert_eq!(file.classes(), ["neg", "pos"]);
    // Documents come in sorted class-folder order: neg/0.txt is "A bad film."
    let first: Vec<&str> = file
        .document(0)
        .expect("document 0")
        .iter()
        .map(|id| vocab.token(id).expect("known id"))
        .collect();
    assert_eq!(first, ["xxbos", "a", "bad", "film", "."]);
    assert_eq!(file.label(0), Some(0));
    // "Great acting, great film!" has "!" below min_freq: it maps to xxunk.
    let fifth: Vec<&str> = file
        .document(4)
        .expect("document 4")
        .iter()
        .map(|id| vocab.token(id).expect("known id"))
        .collect();
    assert_eq!(
        fifth,
        ["xxbos", "xxmaj", "great", "acting", ",", "great", "film", "xxunk"]
    );
    assert_eq!(file.label(4), Some(1));
}

#[test]
fn numericalize_mixed_labels() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let corpus = dir.path().join("docs.jsonl");
    std::fs::write(
        &corpus,
        "{\"text\": \"one\", \"label\": \"a\"}\n{\"text\": \"two\"}\n",
    )
    .expect("write corpus");
    let vocab_dir = dir.path().join("vocab");
    let output = ulmfit(&[
        "vocab",
        "build",
        "--corpus",
        path_str(&corpus),
        "--out",
        path_str(&vocab_dir),
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    // Optional labels: some documents lack one, so no labels are stored.
    let token_file = dir.path().join("out.tok");
    let output = ulmfit(&[
        "numericalize",
        "--vocab",
        path_str(&vocab_dir),
        "--corpus",
        path_str(&corpus),
        "--out",
        path_str(&token_file),
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let file = TokenFile::open(&token_file, None).expect("token file");
    assert_eq!(file.n_documents(), 2);
    assert!(file.classes().is_empty());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("storing no labels"), "{stderr}");

    // Required labels: the unlabelled document is an error that names its line.
    let output = ulmfit(&[
        "numericalize",
        "--vocab",
        path_str(&vocab_dir),
        "--corpus",
        path_str(&corpus),
        "--out",
        path_str(&dir.path().join("required.tok")),
        "--labels",
        "required",
    ]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("docs.jsonl:2"), "{stderr}");
}

#[test]
fn numericalize_refuses_to_overwrite_input() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let corpus = dir.path().join("corpus.txt");
    std::fs::write(&corpus, "some text\nmore text\n").expect("write corpus");
    let vocab_dir = dir.path().join("vocab");
    let output = ulmfit(&[
        "vocab",
        "build",
        "--corpus",
        path_str(&corpus),
        "--out",
        path_str(&vocab_dir),
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let output = ulmfit(&[
        "numericalize",
        "--vocab",
        path_str(&vocab_dir),
        "--corpus",
        path_str(&corpus),
        "--out",
        path_str(&corpus),
    ]);
    assert!(!output.status.success());
    assert_eq!(
        std::fs::read_to_string(&corpus).expect("corpus still readable"),
        "some text\nmore text\n"
    );
}

#[test]
fn empty_corpus_is_an_error() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let corpus = dir.path().join("empty.txt");
    std::fs::write(&corpus, "\n  \n").expect("write corpus");
    let output = ulmfit(&[
        "vocab",
        "build",
        "--corpus",
        path_str(&corpus),
        "--out",
        path_str(&dir.path().join("vocab")),
    ]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no documents found in"), "{stderr}");
    assert!(stderr.contains("empty.txt"), "{stderr}");
}

#[test]
fn tokenize_jsonl_skips_blank_lines_and_bom() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let input = dir.path().join("docs.jsonl");
    std::fs::write(&input, "\u{feff}{\"text\": \"Hi\"}\n\n{\"text\": \"yo\"}\n").expect("write");
    let lines = stdout_lines(&ulmfit(&["tokenize", "--jsonl", path_str(&input)]));
    assert_eq!(
        lines,
        vec![
            serde_json::json!({ "tokens": ["xxbos", "xxmaj", "hi"] }),
            serde_json::json!({ "tokens": ["xxbos", "yo"] }),
        ]
    );
}

#[test]
fn tokenize_reads_stdin_dash() {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ulmfit"))
        .args(["tokenize", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("the binary starts");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin is piped");
        stdin
            .write_all(b"\xef\xbb\xbfHello\n")
            .expect("write stdin");
    }
    let output = child.wait_with_output().expect("the binary runs");
    assert_eq!(
        stdout_lines(&output),
        vec![serde_json::json!({ "tokens": ["xxbos", "xxmaj", "hello"] })]
    );
}

#[test]
fn tokenize_archive_is_an_error() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let input = dir.path().join("reviews.tar.gz");
    std::fs::write(&input, b"\x1f\x8b not really").expect("write");
    let output = ulmfit(&["tokenize", path_str(&input)]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("reviews.tar.gz"), "{stderr}");
    assert!(!stderr.contains("--encoding"), "{stderr}");
}

#[test]
fn max_vocab_below_specials_is_an_error() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let corpus = dir.path().join("corpus.txt");
    std::fs::write(&corpus, "some text\n").expect("write corpus");
    let output = ulmfit(&[
        "vocab",
        "build",
        "--corpus",
        path_str(&corpus),
        "--out",
        path_str(&dir.path().join("vocab")),
        "--max-vocab",
        "5",
    ]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--max-vocab 5"), "{stderr}");
}

#[test]
fn subword_vocab_size_needs_subword() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let corpus = dir.path().join("docs.txt");
    std::fs::write(&corpus, "some text\n").expect("write corpus");
    let output = ulmfit(&[
        "vocab",
        "build",
        "--corpus",
        path_str(&corpus),
        "--out",
        path_str(&dir.path().join("v")),
        "--vocab-size",
        "100",
    ]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--subword"), "{stderr}");
}

#[test]
fn subword_vocab_tokenize_and_numericalize() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let corpus = dir.path().join("corpus.txt");
    let sentences: Vec<String> = (0..300)
        .map(|i| format!("the movie number {i} was rather good and the acting was fine"))
        .collect();
    std::fs::write(&corpus, sentences.join("\n") + "\n").expect("write corpus");
    let model_dir = dir.path().join("unigram");
    let output = ulmfit(&[
        "vocab",
        "build",
        "--corpus",
        path_str(&corpus),
        "--out",
        path_str(&model_dir),
        "--subword",
        "unigram",
        "--vocab-size",
        "60",
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(model_dir.join("tokenizer.json").is_file());
    let vocab = Vocab::load(&model_dir).expect("subword vocabulary");
    assert!(vocab.len() <= 60, "{} pieces", vocab.len());
    assert_eq!(vocab.token(2), Some("xxbos"));

    let input = dir.path().join("input.txt");
    std::fs::write(&input, "The acting was good\n").expect("write input");
    let lines = stdout_lines(&ulmfit(&[
        "tokenize",
        "--subword-model",
        path_str(&model_dir),
        path_str(&input),
    ]));
    let pieces: Vec<String> =
        serde_json::from_value(lines[0]["tokens"].clone()).expect("a token list");
    assert_eq!(pieces.first().map(String::as_str), Some("xxbos"));
    assert_eq!(pieces.get(1).map(String::as_str), Some("xxmaj"));
    let text: String = pieces[2..].concat().replace('\u{2581}', " ");
    assert_eq!(text.trim(), "the acting was good");

    let token_file = dir.path().join("corpus.tok");
    let output = ulmfit(&[
        "numericalize",
        "--vocab",
        path_str(&model_dir),
        "--corpus",
        path_str(&corpus),
        "--out",
        path_str(&token_file),
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let file = TokenFile::open(&token_file, Some(&vocab.content_hash())).expect("token file");
    assert_eq!(file.n_documents(), 300);
    assert_eq!(file.document(0).expect("document 0").get(0), Some(2));
}

#[test]
fn vocab_build_is_identical_across_processes() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let corpus = dir.path().join("corpus.txt");
    // 500 distinct words, each seen exactly 3 times: every count is a tie. The words are
    // written in scrambled order and have no character repeated 3 times, which fastai's
    // rules would rewrite.
    let letters: Vec<char> = ('a'..='z').filter(|&c| c != 'q').collect();
    let words: Vec<String> = (0..500)
        .map(|i| (i * 7919) % 500)
        .map(|i| format!("q{}{}", letters[i / 25], letters[i % 25]))
        .collect();
    let text = (0..3)
        .map(|_| words.join(" "))
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&corpus, text + "\n").expect("write corpus");
    let mut files = Vec::new();
    for name in ["first", "second"] {
        let out = dir.path().join(name);
        let output = ulmfit(&[
            "vocab",
            "build",
            "--corpus",
            path_str(&corpus),
            "--out",
            path_str(&out),
        ]);
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        files.push(std::fs::read(out.join("vocab.txt")).expect("vocab.txt"));
    }
    assert_eq!(files[0], files[1]);
    let first = Vocab::load(&dir.path().join("first")).expect("vocabulary");
    assert_eq!(first.len(), 9 + 500);
    // Equal counts are ordered by the token's bytes: "qaa" < "qab" < ...
    assert_eq!(first.token(9), Some("qaa"));
    assert_eq!(first.token(10), Some("qab"));
    assert_eq!(first.token(9 + 25), Some("qba"));
}

#[test]
fn help_lists_global_options_apart() {
    let output = ulmfit(&["predict", "--help"]);
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    let heading = help
        .find("Global options:")
        .expect("a global options heading");
    let own = help.find("--batch-size").expect("predict's --batch-size");
    let threads = help.find("--threads").expect("the global --threads");
    assert!(own < heading, "{help}");
    assert!(heading < threads, "{help}");
}
