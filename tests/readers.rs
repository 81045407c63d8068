//! Corpus readers on small files written into temporary folders.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use tempfile::TempDir;
use ulmfit::text::readers::{
    detect_format, open, read_all, Document, DocumentSplit, Encoding, Format, LabelRequirement,
    ReadError, ReadOptions, ReadReport,
};

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).unwrap();
    }
    fs::write(&path, bytes).unwrap();
    path
}

fn read(path: &Path, options: &ReadOptions) -> Result<ReadReport, ReadError> {
    read_all(&[path.to_path_buf()], options)
}

fn texts(documents: &[Document]) -> Vec<&str> {
    documents
        .iter()
        .map(|document| document.text.as_str())
        .collect()
}

fn labels(documents: &[Document]) -> Vec<Option<&str>> {
    documents
        .iter()
        .map(|document| document.label.as_deref())
        .collect()
}

fn lines(documents: &[Document]) -> Vec<u64> {
    documents
        .iter()
        .map(|document| document.origin.line)
        .collect()
}

fn required() -> ReadOptions {
    ReadOptions {
        labels: LabelRequirement::Required,
        ..ReadOptions::default()
    }
}

// Format detection

#[test]
fn format_follows_extension() {
    let cases = [
        ("train.csv", Format::Csv),
        ("TRAIN.CSV", Format::Csv),
        ("train.jsonl", Format::Jsonl),
        ("train.ndjson", Format::Jsonl),
        ("train.txt", Format::Text),
        ("wiki.train.tokens", Format::Text),
        ("README", Format::Text),
    ];
    for (name, expected) in cases {
        assert_eq!(detect_format(Path::new(name)).unwrap(), expected, "{name}");
    }
}

#[test]
fn format_of_directory_is_folder() {
    let dir = TempDir::new().unwrap();
    assert_eq!(detect_format(dir.path()).unwrap(), Format::Folder);
}

#[test]
fn archives_rejected_with_hint() {
    let dir = TempDir::new().unwrap();
    for name in ["aclImdb.tar.gz", "corpus.zip", "train.csv.gz"] {
        let path = write(dir.path(), name, b"not really an archive");
        let error = detect_format(&path).unwrap_err();
        assert!(matches!(error, ReadError::Archive { .. }), "{name}");
        assert!(error.to_string().contains("unpack it first"), "{name}");
        let text_options = ReadOptions {
            format: Some(Format::Text),
            ..ReadOptions::default()
        };
        let error = open(&path, &text_options).err().unwrap();
        assert!(matches!(error, ReadError::Archive { .. }), "{name}");
    }
}

#[test]
fn format_option_overrides_extension() {
    let dir = TempDir::new().unwrap();
    let path = write(
        dir.path(),
        "records.txt",
        b"{\"text\": \"hi\", \"label\": 1}\n",
    );
    let options = ReadOptions {
        format: Some(Format::Jsonl),
        ..ReadOptions::default()
    };
    let report = read(&path, &options).unwrap();
    assert_eq!(texts(&report.documents), ["hi"]);
    assert_eq!(labels(&report.documents), [Some("1")]);
}

#[test]
fn folder_format_on_file_rejected() {
    let dir = TempDir::new().unwrap();
    let path = write(dir.path(), "a.txt", b"hello\n");
    let options = ReadOptions {
        format: Some(Format::Folder),
        ..ReadOptions::default()
    };
    let error = open(&path, &options).err().unwrap();
    assert!(matches!(error, ReadError::FormatMismatch { .. }));
}

#[test]
fn missing_file_names_path() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("absent.txt");
    let error = open(&path, &ReadOptions::default()).err().unwrap();
    assert!(matches!(error, ReadError::Io { .. }));
    assert!(error.to_string().contains("absent.txt"));
}

// CSV

#[test]
fn csv_quoted_newlines_and_quotes() {
    let dir = TempDir::new().unwrap();
    let csv = b"text,label\n\"line one\nline two\",pos\n\"say \"\"hi\"\", then, go\",neg\n";
    let path = write(dir.path(), "train.csv", csv);
    let report = read(&path, &required()).unwrap();
    assert_eq!(
        texts(&report.documents),
        ["line one\nline two", "say \"hi\", then, go"]
    );
    assert_eq!(labels(&report.documents), [Some("pos"), Some("neg")]);
    assert_eq!(lines(&report.documents), [2, 4]);
}

#[test]
fn csv_crlf_and_bom() {
    let dir = TempDir::new().unwrap();
    let csv = b"\xEF\xBB\xBFtext,label\r\nhello,pos\r\n\r\n\"quoted\",\"neg\"\r\n";
    let path = write(dir.path(), "train.csv", csv);
    let report = read(&path, &required()).unwrap();
    assert_eq!(texts(&report.documents), ["hello", "quoted"]);
    assert_eq!(labels(&report.documents), [Some("pos"), Some("neg")]);
    assert_eq!(lines(&report.documents), [2, 4]);
}

#[test]
fn csv_carriage_return_inside_field_kept() {
    let dir = TempDir::new().unwrap();
    let path = write(dir.path(), "train.csv", b"text,label\na\rb,pos\nc,neg\n");
    let report = read(&path, &required()).unwrap();
    assert_eq!(texts(&report.documents), ["a\rb", "c"]);
    assert_eq!(labels(&report.documents), [Some("pos"), Some("neg")]);
}

#[test]
fn csv_text_columns_joined_like_fastai() {
    let dir = TempDir::new().unwrap();
    let csv = b"label,title,body\npos,Great film,Loved it.\n";
    let path = write(dir.path(), "train.csv", csv);
    let options = ReadOptions {
        text_columns: vec!["title".into(), "body".into()],
        ..required()
    };
    let report = read(&path, &options).unwrap();
    assert_eq!(
        texts(&report.documents),
        ["xxfld 1 Great film xxfld 2 Loved it."]
    );
    assert_eq!(labels(&report.documents), [Some("pos")]);
}

#[test]
fn csv_named_label_column() {
    let dir = TempDir::new().unwrap();
    let csv = b"review,sentiment,id\nfine,1,7\n";
    let path = write(dir.path(), "train.csv", csv);
    let options = ReadOptions {
        text_columns: vec!["review".into()],
        label_column: Some("sentiment".into()),
        ..required()
    };
    let report = read(&path, &options).unwrap();
    assert_eq!(texts(&report.documents), ["fine"]);
    assert_eq!(labels(&report.documents), [Some("1")]);
}

#[test]
fn csv_unknown_column_lists_available() {
    let dir = TempDir::new().unwrap();
    let path = write(dir.path(), "train.csv", b"text,label\nhello,pos\n");
    let options = ReadOptions {
        text_columns: vec!["body".into()],
        ..ReadOptions::default()
    };
    let error = open(&path, &options).err().unwrap();
    assert!(matches!(error, ReadError::UnknownColumn { .. }));
    let message = error.to_string();
    assert!(message.contains("\"body\""), "{message}");
    assert!(
        message.contains("available columns: text, label"),
        "{message}"
    );
    assert!(message.contains("--label-column"), "{message}");
}

#[test]
fn csv_required_label_column_must_exist() {
    let dir = TempDir::new().unwrap();
    let path = write(dir.path(), "train.csv", b"text,score\nhello,5\n");
    let error = open(&path, &required()).err().unwrap();
    assert!(matches!(error, ReadError::UnknownColumn { ref column, .. } if column == "label"));
}

#[test]
fn csv_without_header_uses_column_numbers() {
    let dir = TempDir::new().unwrap();
    let path = write(dir.path(), "train.csv", b"pos,hello world\nneg,bye\n");
    let options = ReadOptions {
        no_header: true,
        text_columns: vec!["1".into()],
        label_column: Some("0".into()),
        ..required()
    };
    let report = read(&path, &options).unwrap();
    assert_eq!(texts(&report.documents), ["hello world", "bye"]);
    assert_eq!(labels(&report.documents), [Some("pos"), Some("neg")]);
    assert_eq!(lines(&report.documents), [1, 2]);
}

#[test]
fn csv_without_header_rejects_bad_columns() {
    let dir = TempDir::new().unwrap();
    let path = write(dir.path(), "train.csv", b"pos,hello\n");
    let no_columns = ReadOptions {
        no_header: true,
        ..ReadOptions::default()
    };
    let error = open(&path, &no_columns).err().unwrap();
    assert!(matches!(error, ReadError::MissingTextColumns { .. }));

    let out_of_range = ReadOptions {
        no_header: true,
        text_columns: vec!["2".into()],
        ..ReadOptions::default()
    };
    let error = open(&path, &out_of_range).err().unwrap();
    assert!(matches!(
        error,
        ReadError::InvalidColumnNumber { count: 2, .. }
    ));

    let name = ReadOptions {
        no_header: true,
        text_columns: vec!["text".into()],
        ..ReadOptions::default()
    };
    let error = open(&path, &name).err().unwrap();
    assert!(matches!(error, ReadError::InvalidColumnNumber { .. }));
}

#[test]
fn csv_ragged_row_names_file_and_line() {
    let dir = TempDir::new().unwrap();
    let path = write(
        dir.path(),
        "train.csv",
        b"text,label\nok,pos\nnot ok,neg,extra\n",
    );
    let result = read(&path, &ReadOptions::default());
    let error = result.unwrap_err();
    assert!(matches!(
        error,
        ReadError::RaggedRow {
            line: 3,
            expected: 2,
            found: 3,
            ..
        }
    ));
    assert!(error.to_string().contains("train.csv:3:"));
}

#[test]
fn csv_integer_labels_stay_strings() {
    let dir = TempDir::new().unwrap();
    let path = write(dir.path(), "train.csv", b"text,label\na,1\nb,2\nc,3\nd,1\n");
    let report = read(&path, &required()).unwrap();
    assert_eq!(
        labels(&report.documents),
        [Some("1"), Some("2"), Some("3"), Some("1")]
    );
}

#[test]
fn csv_empty_label_required_errors() {
    let dir = TempDir::new().unwrap();
    let path = write(dir.path(), "train.csv", b"text,label\na,pos\nb, \n");
    let error = read(&path, &required()).unwrap_err();
    assert!(matches!(error, ReadError::MissingLabel { line: 3, .. }));
    assert!(error.to_string().contains("train.csv:3:"));
}

#[test]
fn csv_optional_and_ignored_labels() {
    let dir = TempDir::new().unwrap();
    let path = write(dir.path(), "train.csv", b"text,label\na,pos\nb,\n");
    let optional = read(&path, &ReadOptions::default()).unwrap();
    assert_eq!(labels(&optional.documents), [Some("pos"), None]);

    let ignored_options = ReadOptions {
        labels: LabelRequirement::Ignored,
        ..ReadOptions::default()
    };
    let ignored = read(&path, &ignored_options).unwrap();
    assert_eq!(labels(&ignored.documents), [None, None]);

    let unlabelled = write(dir.path(), "lm.csv", b"text\nc\n");
    let report = read(&unlabelled, &ReadOptions::default()).unwrap();
    assert_eq!(labels(&report.documents), [None]);
}

#[test]
fn csv_empty_texts_skipped_and_counted() {
    let dir = TempDir::new().unwrap();
    let path = write(
        dir.path(),
        "train.csv",
        b"text,label\na,pos\n,neg\n\"  \",pos\nb,neg\n",
    );
    let report = read(&path, &required()).unwrap();
    assert_eq!(texts(&report.documents), ["a", "b"]);
    assert_eq!(report.skipped_empty, 2);
}

#[test]
fn csv_latin1_fields_decode() {
    let dir = TempDir::new().unwrap();
    let path = write(
        dir.path(),
        "train.csv",
        b"text,label\ncaf\xe9 cr\xe8me,pos\n",
    );
    let options = ReadOptions {
        encoding: Encoding::Latin1,
        ..required()
    };
    let report = read(&path, &options).unwrap();
    assert_eq!(texts(&report.documents), ["caf\u{e9} cr\u{e8}me"]);
}

#[test]
fn csv_invalid_utf8_names_exact_line() {
    let dir = TempDir::new().unwrap();
    let csv = b"label,text\npos,fine\nneg,\"first\nsecond\nbad \xe9\"\n";
    let path = write(dir.path(), "train.csv", csv);
    let error = read(&path, &required()).unwrap_err();
    assert!(matches!(error, ReadError::InvalidUtf8 { line: 5, .. }));
    let message = error.to_string();
    assert!(message.contains("train.csv:5:"), "{message}");
    assert!(message.contains("--encoding latin1"), "{message}");
}

#[test]
fn csv_empty_file_needs_header() {
    let dir = TempDir::new().unwrap();
    let path = write(dir.path(), "train.csv", b"");
    let error = open(&path, &ReadOptions::default()).err().unwrap();
    assert!(matches!(error, ReadError::MissingHeader { .. }));
}

// JSON lines

#[test]
fn jsonl_text_and_labels() {
    let dir = TempDir::new().unwrap();
    let jsonl = concat!(
        "{\"text\": \"first\", \"label\": \"pos\", \"id\": 9}\n",
        "\n",
        "{\"label\": 3, \"text\": \"second\"}\r\n",
        "{\"text\": \"third\"}\n",
    );
    let path = write(dir.path(), "train.jsonl", jsonl.as_bytes());
    let report = read(&path, &ReadOptions::default()).unwrap();
    assert_eq!(texts(&report.documents), ["first", "second", "third"]);
    assert_eq!(labels(&report.documents), [Some("pos"), Some("3"), None]);
    assert_eq!(lines(&report.documents), [1, 3, 4]);
}

#[test]
fn jsonl_invalid_json_names_line() {
    let dir = TempDir::new().unwrap();
    let path = write(
        dir.path(),
        "train.jsonl",
        b"{\"text\": \"a\"}\n{\"text\": \n",
    );
    let error = read(&path, &ReadOptions::default()).unwrap_err();
    assert!(matches!(error, ReadError::InvalidJson { line: 2, .. }));
    assert!(error.to_string().contains("train.jsonl:2:"));
}

#[test]
fn jsonl_missing_text_names_line() {
    let dir = TempDir::new().unwrap();
    let path = write(
        dir.path(),
        "train.jsonl",
        b"{\"text\": \"a\"}\n{\"body\": \"b\"}\n",
    );
    let error = read(&path, &ReadOptions::default()).unwrap_err();
    assert!(matches!(error, ReadError::MissingField { line: 2, ref field, .. } if field == "text"));
}

#[test]
fn jsonl_wrong_types_rejected() {
    let dir = TempDir::new().unwrap();
    let path = write(dir.path(), "numbers.jsonl", b"{\"text\": 5}\n");
    let error = read(&path, &ReadOptions::default()).unwrap_err();
    assert!(matches!(error, ReadError::InvalidField { line: 1, .. }));

    let path = write(
        dir.path(),
        "label.jsonl",
        b"{\"text\": \"a\", \"label\": [1]}\n",
    );
    let error = read(&path, &ReadOptions::default()).unwrap_err();
    assert!(matches!(error, ReadError::InvalidField { ref field, .. } if field == "label"));
}

#[test]
fn jsonl_required_label_missing_errors() {
    let dir = TempDir::new().unwrap();
    let path = write(
        dir.path(),
        "train.jsonl",
        b"{\"text\": \"a\", \"label\": 0}\n{\"text\": \"b\", \"label\": \"\"}\n",
    );
    let error = read(&path, &required()).unwrap_err();
    assert!(matches!(error, ReadError::MissingLabel { line: 2, .. }));
}

#[test]
fn jsonl_empty_texts_skipped_and_counted() {
    let dir = TempDir::new().unwrap();
    let jsonl = b"{\"text\": \" \"}\n{\"text\": \"kept\"}\n{\"text\": \"\"}\n";
    let path = write(dir.path(), "train.jsonl", jsonl);
    let report = read(&path, &ReadOptions::default()).unwrap();
    assert_eq!(texts(&report.documents), ["kept"]);
    assert_eq!(report.skipped_empty, 2);
}

// Plain text

#[test]
fn text_one_document_per_line() {
    let dir = TempDir::new().unwrap();
    let path = write(dir.path(), "corpus.txt", b"alpha\n\nbeta\r\n  \ngamma");
    let report = read(&path, &ReadOptions::default()).unwrap();
    assert_eq!(texts(&report.documents), ["alpha", "beta", "gamma"]);
    assert_eq!(lines(&report.documents), [1, 3, 5]);
    assert_eq!(labels(&report.documents), [None, None, None]);
    assert_eq!(report.skipped_empty, 0);
}

#[test]
fn text_blank_line_split() {
    let dir = TempDir::new().unwrap();
    let text = b"\nfirst one\nfirst two\n\n \nsecond\n\nthird a\r\nthird b\n";
    let path = write(dir.path(), "corpus.txt", text);
    let options = ReadOptions {
        documents: DocumentSplit::BlankLine,
        ..ReadOptions::default()
    };
    let report = read(&path, &options).unwrap();
    assert_eq!(
        texts(&report.documents),
        ["first one\nfirst two", "second", "third a\nthird b"]
    );
    assert_eq!(lines(&report.documents), [2, 6, 8]);
}

#[test]
fn text_lines_end_only_at_newline() {
    let dir = TempDir::new().unwrap();
    let path = write(dir.path(), "corpus.txt", b"a\x85b\rc\nd\n");
    let options = ReadOptions {
        encoding: Encoding::Latin1,
        ..ReadOptions::default()
    };
    let report = read(&path, &options).unwrap();
    assert_eq!(texts(&report.documents), ["a\u{85}b\rc", "d"]);
}

#[test]
fn text_utf8_bom_removed() {
    let dir = TempDir::new().unwrap();
    let path = write(dir.path(), "corpus.txt", b"\xEF\xBB\xBFhello\n");
    let report = read(&path, &ReadOptions::default()).unwrap();
    assert_eq!(texts(&report.documents), ["hello"]);
}

#[test]
fn text_invalid_utf8_names_line_and_hint() {
    let dir = TempDir::new().unwrap();
    let path = write(dir.path(), "corpus.txt", b"fine\ncaf\xe9\nlater\n");
    let mut reader = open(&path, &ReadOptions::default()).unwrap();
    let first = reader.next().unwrap().unwrap();
    assert_eq!(first.text, "fine");
    let error = reader.next().unwrap().unwrap_err();
    assert!(matches!(error, ReadError::InvalidUtf8 { line: 2, .. }));
    let message = error.to_string();
    assert!(message.contains("corpus.txt:2:"), "{message}");
    assert!(message.contains("--encoding latin1"), "{message}");
    assert!(reader.next().is_none());
}

#[test]
fn text_with_required_labels_rejected() {
    let dir = TempDir::new().unwrap();
    let path = write(dir.path(), "corpus.txt", b"hello\n");
    let error = open(&path, &required()).err().unwrap();
    assert!(matches!(error, ReadError::LabelsUnavailable { .. }));
}

#[test]
fn read_all_concatenates_paths() {
    let dir = TempDir::new().unwrap();
    let first = write(dir.path(), "a.txt", b"one\ntwo\n");
    let second = write(dir.path(), "b.jsonl", b"{\"text\": \"three\"}\n");
    let report = read_all(&[first.clone(), second.clone()], &ReadOptions::default()).unwrap();
    assert_eq!(texts(&report.documents), ["one", "two", "three"]);
    assert_eq!(report.documents[0].origin.path, first);
    assert_eq!(report.documents[2].origin.path, second);
}

// Folders

/// Builds an IMDb-like tree: `pos/`, `neg/`, `unsup/` and stray top-level files.
fn imdb_tree(dir: &Path) -> PathBuf {
    let root = dir.join("train");
    write(&root, "pos/2_9.txt", b"pos two");
    write(&root, "pos/10_7.txt", b"pos ten");
    write(&root, "pos/notes.md", b"not a review");
    write(&root, "neg/0_1.txt", b"neg zero\r\nsecond line");
    write(&root, "unsup/5_0.txt", b"unlabelled");
    write(&root, "labeledBow.feat", b"0:1");
    write(&root, "urls_pos.txt", b"http://example.invalid/");
    root
}

#[test]
fn folder_classes_from_subfolders() {
    let dir = TempDir::new().unwrap();
    let root = imdb_tree(dir.path());
    let report = read(&root, &required()).unwrap();
    assert_eq!(
        texts(&report.documents),
        ["neg zero\nsecond line", "pos ten", "pos two"]
    );
    assert_eq!(
        labels(&report.documents),
        [Some("neg"), Some("pos"), Some("pos")]
    );
    assert_eq!(report.documents[1].origin.path, root.join("pos/10_7.txt"));
    assert_eq!(report.documents[1].origin.line, 1);
}

#[test]
fn folder_unsup_read_unless_required() {
    let dir = TempDir::new().unwrap();
    let root = imdb_tree(dir.path());
    let optional = read(&root, &ReadOptions::default()).unwrap();
    assert_eq!(
        labels(&optional.documents),
        [Some("neg"), Some("pos"), Some("pos"), None]
    );
    assert_eq!(optional.documents[3].text, "unlabelled");

    let ignored_options = ReadOptions {
        labels: LabelRequirement::Ignored,
        ..ReadOptions::default()
    };
    let ignored = read(&root, &ignored_options).unwrap();
    assert_eq!(labels(&ignored.documents), [None, None, None, None]);
}

#[test]
fn folder_explicit_classes() {
    let dir = TempDir::new().unwrap();
    let root = imdb_tree(dir.path());
    write(&root, "extra/1_1.txt", b"ignored class");
    let only_pos = ReadOptions {
        classes: Some(vec!["pos".into()]),
        ..required()
    };
    let report = read(&root, &only_pos).unwrap();
    assert_eq!(texts(&report.documents), ["pos ten", "pos two"]);

    let given_order = ReadOptions {
        classes: Some(vec!["pos".into(), "neg".into()]),
        ..required()
    };
    let report = read(&root, &given_order).unwrap();
    assert_eq!(
        labels(&report.documents),
        [Some("pos"), Some("pos"), Some("neg")]
    );
}

#[test]
fn folder_missing_class_errors() {
    let dir = TempDir::new().unwrap();
    let root = imdb_tree(dir.path());
    let options = ReadOptions {
        classes: Some(vec!["pos".into(), "neutral".into()]),
        ..required()
    };
    let error = open(&root, &options).err().unwrap();
    assert!(matches!(error, ReadError::MissingClassFolder { ref class, .. } if class == "neutral"));

    let unsup = ReadOptions {
        classes: Some(vec!["unsup".into()]),
        ..required()
    };
    let error = open(&root, &unsup).err().unwrap();
    assert!(matches!(error, ReadError::InvalidClass { .. }));
}

#[test]
fn folder_without_subfolders_is_unlabelled() {
    let dir = TempDir::new().unwrap();
    write(dir.path(), "b.txt", b"second");
    write(dir.path(), "a.txt", b"first");
    write(dir.path(), "empty.txt", b"  \n");
    let report = read(dir.path(), &ReadOptions::default()).unwrap();
    assert_eq!(texts(&report.documents), ["first", "second"]);
    assert_eq!(labels(&report.documents), [None, None]);
    assert_eq!(report.skipped_empty, 1);

    let error = open(dir.path(), &required()).err().unwrap();
    assert!(matches!(error, ReadError::LabelsUnavailable { .. }));
}

#[test]
fn folder_order_is_sorted_across_batches() {
    let dir = TempDir::new().unwrap();
    let count = 600;
    for index in (0..count).rev() {
        write(
            dir.path(),
            &format!("doc{index:04}.txt"),
            index.to_string().as_bytes(),
        );
    }
    let report = read(dir.path(), &ReadOptions::default()).unwrap();
    let expected: Vec<String> = (0..count).map(|index| index.to_string()).collect();
    assert_eq!(texts(&report.documents), expected);
}

#[test]
fn folder_invalid_utf8_names_file_and_line() {
    let dir = TempDir::new().unwrap();
    write(dir.path(), "a.txt", b"fine");
    write(dir.path(), "b.txt", b"line one\nline \xe9 two");
    let error = read(dir.path(), &ReadOptions::default()).unwrap_err();
    assert!(matches!(error, ReadError::InvalidUtf8 { line: 2, .. }));
    assert!(error.to_string().contains("b.txt:2:"));
}

#[test]
fn folder_without_text_files_errors() {
    let dir = TempDir::new().unwrap();
    write(dir.path(), "train/pos/readme.md", b"no reviews");
    let error = open(&dir.path().join("train"), &ReadOptions::default())
        .err()
        .unwrap();
    assert!(matches!(error, ReadError::NoTextFiles { .. }));
}

// Shared data

#[test]
fn rt_polarity_latin1_line_counts() {
    let Some(shared) = common::shared_dir("rt_polarity_latin1_line_counts") else {
        return;
    };
    let sentences = shared.join("data/sentences");
    let options = ReadOptions {
        encoding: Encoding::Latin1,
        format: Some(Format::Text),
        ..ReadOptions::default()
    };
    for name in ["rt-polarity.pos", "rt-polarity.neg"] {
        let report = read(&sentences.join(name), &options).unwrap();
        assert_eq!(report.documents.len(), 5_331, "{name}");
        assert_eq!(report.skipped_empty, 0, "{name}");
    }
}

#[test]
fn rt_polarity_utf8_fails_with_line() {
    let Some(shared) = common::shared_dir("rt_polarity_utf8_fails_with_line") else {
        return;
    };
    let sentences = shared.join("data/sentences");
    // First lines with bytes that are not valid UTF-8, found with Python's decoder.
    for (name, line) in [("rt-polarity.pos", 44), ("rt-polarity.neg", 32)] {
        let error = read(&sentences.join(name), &ReadOptions::default()).unwrap_err();
        let message = error.to_string();
        assert!(message.contains(&format!("{name}:{line}:")), "{message}");
        assert!(message.contains("--encoding latin1"), "{message}");
    }
}

#[test]
fn missing_path_is_not_found() {
    let dir = TempDir::new().unwrap();
    let missing = dir.path().join("no-such-corpus");
    // Labels required: the error is the missing path, not the plain-text format.
    let error = read(&missing, &required()).unwrap_err();
    assert!(matches!(error, ReadError::Io { .. }), "{error:?}");
    let message = error.to_string();
    assert!(message.contains("no-such-corpus"), "{message}");
    assert!(message.contains("no such file or folder"), "{message}");
}
