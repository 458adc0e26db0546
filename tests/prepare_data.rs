//! `msclip prepare`'s pipeline: CSV/TSV listings and webdataset tars to memory-mapped shards.
//! Odd image modes come out as the reference's RGB, the resize and crop match torchvision on
//! PIL, and every bad input (missing, corrupt or huge images, malformed rows, empty captions,
//! hostile tar paths) is skipped and counted; zero samples, a non-empty folder and an unfinished
//! dataset are clear errors.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use image::{DynamicImage, ImageBuffer, ImageFormat, Luma, Rgb, Rgba};
use msclip::data::decode::{decode_rgb, prepare_image, resize_and_crop};
use msclip::data::prepare::{Input, PrepareConfig, prepare};
use msclip::data::shards::{INDEX_FILE, PreparedDataset};
use msclip::data::sources::csv::CsvFormat;
use msclip::text::{Tokenizer, Truncation};

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("msclip-prepare-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn encode(image: DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut bytes = Vec::new();
    image.write_to(&mut Cursor::new(&mut bytes), format).unwrap();
    bytes
}

fn solid_rgb(w: u32, h: u32, rgb: [u8; 3]) -> DynamicImage {
    DynamicImage::ImageRgb8(ImageBuffer::from_pixel(w, h, Rgb(rgb)))
}

fn config(out: &Path, resolution: usize, context: usize) -> PrepareConfig {
    PrepareConfig { out: out.to_path_buf(), resolution, context, per_shard: Some(3), tokenizer_name: "clip".into() }
}

fn every_pixel_is(pixels: &[u8], rgb: [u8; 3]) -> bool {
    pixels.chunks_exact(3).all(|p| p == rgb)
}

#[test]
fn the_resize_and_crop_match_torchvision_on_pil() {
    // scripts/make_image_fixtures.py: Pillow 12 under torchvision's evaluation transform.
    for (size, resolution) in [("97x61", 32), ("130x301", 48), ("23x13", 40)] {
        let source = std::fs::read(format!("tests/data/images/resize_source_{size}.png")).unwrap();
        let reference = std::fs::read(format!("tests/data/images/resize_reference_{size}_{resolution}.rgb")).unwrap();
        let ours = prepare_image(&source, resolution).unwrap();
        assert_eq!(ours.len(), reference.len());
        // Pillow's algorithm, fixed-point weights and 8-bit intermediate included: the same bytes.
        let differing = ours.iter().zip(&reference).filter(|(a, b)| a != b).count();
        assert_eq!(differing, 0, "{size} to {resolution}: {differing} bytes differ from PIL's");
    }
}

#[test]
fn every_image_mode_becomes_rgb_as_pil_converts_it() {
    let grey = DynamicImage::ImageLuma8(ImageBuffer::from_pixel(9, 7, Luma([77])));
    let grey16 = DynamicImage::ImageLuma16(ImageBuffer::from_pixel(9, 7, Luma([0xffff])));
    let rgba = DynamicImage::ImageRgba8(ImageBuffer::from_pixel(9, 7, Rgba([10, 20, 30, 0])));
    let cases = [
        (encode(grey, ImageFormat::Png), [77, 77, 77]),
        (encode(grey16, ImageFormat::Png), [255, 255, 255]),
        // Alpha dropped, not composited: PIL's convert("RGB").
        (encode(rgba, ImageFormat::Png), [10, 20, 30]),
        (encode(solid_rgb(9, 7, [0, 128, 255]), ImageFormat::Bmp), [0, 128, 255]),
        (encode(solid_rgb(9, 7, [0, 128, 255]), ImageFormat::Gif), [0, 128, 255]),
        (encode(solid_rgb(9, 7, [0, 128, 255]), ImageFormat::WebP), [0, 128, 255]),
    ];
    for (i, (bytes, rgb)) in cases.iter().enumerate() {
        let pixels = prepare_image(bytes, 16).unwrap();
        assert!(every_pixel_is(&pixels, *rgb), "case {i}: {:?}", &pixels[..3]);
    }
    // A CMYK JPEG (Pillow's C=0 M=255 Y=255 K=0): red, within JPEG's rounding.
    let cmyk = decode_rgb(&std::fs::read("tests/data/images/cmyk.jpg").unwrap()).unwrap();
    let p = cmyk.get_pixel(12, 8).0;
    assert!(p[0] > 240 && p[1] < 16 && p[2] < 16, "CMYK red came out as {p:?}");
    // A palette PNG, written by hand: two colours, index 1 everywhere.
    let palette = resize_and_crop(&decode_rgb(&palette_png()).unwrap(), 4);
    assert!(every_pixel_is(&palette, [200, 100, 50]), "{:?}", &palette[..3]);
}

/// A 5 x 3 indexed-colour PNG whose every pixel is palette entry 1, (200, 100, 50).
fn palette_png() -> Vec<u8> {
    let mut bytes = Vec::new();
    let mut encoder = png::Encoder::new(&mut bytes, 5, 3);
    encoder.set_color(png::ColorType::Indexed);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.set_palette(vec![0, 0, 0, 200, 100, 50]);
    encoder.write_header().unwrap().write_image_data(&[1; 15]).unwrap();
    bytes
}

/// A grey PNG of 10,000 x 9,000 pixels (over PIL's 89,478,485-pixel limit), a few kB of file.
fn write_bomb_png(path: &Path) {
    let file = std::fs::File::create(path).unwrap();
    let mut encoder = png::Encoder::new(std::io::BufWriter::new(file), 10_000, 9_000);
    encoder.set_color(png::ColorType::Grayscale);
    let mut writer = encoder.write_header().unwrap().into_stream_writer().unwrap();
    let row = vec![0u8; 10_000];
    for _ in 0..9_000 {
        std::io::Write::write_all(&mut writer, &row).unwrap();
    }
    writer.finish().unwrap();
}

#[test]
fn a_listing_becomes_shards_and_every_bad_row_is_counted() {
    let dir = scratch("csv");
    std::fs::create_dir(dir.join("img")).unwrap();
    let write = |name: &str, bytes: &[u8]| std::fs::write(dir.join("img").join(name), bytes).unwrap();
    write("red.png", &encode(solid_rgb(50, 40, [255, 0, 0]), ImageFormat::Png));
    write("blue.jpg", &encode(solid_rgb(40, 50, [0, 0, 255]), ImageFormat::Jpeg));
    write("green.png", &encode(solid_rgb(16, 16, [0, 255, 0]), ImageFormat::Png));
    write("grey.png", &encode(DynamicImage::ImageLuma8(ImageBuffer::from_pixel(20, 20, Luma([90]))), ImageFormat::Png));
    write("corrupt.jpg", b"\xff\xd8\xff\xe0 this is not a jpeg");
    write_bomb_png(&dir.join("img").join("bomb.png"));
    let long = "a very long caption that goes on ".repeat(10);
    let listing = format!(
        "title,filepath,extra\n\
         \"a red square, plain\",img/red.png,x\n\
         a blue square,img/blue.jpg,x\n\
         {long},img/green.png,x\n\
         a grey square,img/grey.png,x\n\
         broken,img/corrupt.jpg,x\n\
         gone,img/missing.png,x\n\
         too many,img/red.png,x,y\n\
         ,img/red.png,x\n\
         huge,img/bomb.png,x\n"
    );
    std::fs::write(dir.join("pairs.csv"), listing).unwrap();
    let tokenizer = Tokenizer::clip().unwrap();
    let input = Input::Listing(dir.join("pairs.csv"), CsvFormat::for_path(&dir.join("pairs.csv")));
    let out = dir.join("prepared");
    let mut calls = 0;
    let prepared = prepare(&input, &tokenizer, &config(&out, 24, 20), &mut |_, _| calls += 1).unwrap();
    assert!(calls >= 1);

    let index = &prepared.index;
    assert_eq!((index.samples, index.shards.len(), index.truncated_captions), (4, 2, 1), "{index:?}");
    let skipped = prepared.skipped.counts();
    for (reason, count) in [
        ("unreadable image", 1),
        ("missing image file", 1),
        ("malformed row (wrong number of fields)", 1),
        ("empty caption", 1),
        ("image over 89,478,485 pixels", 1),
    ] {
        assert_eq!(skipped.get(reason), Some(&count), "{reason}: {skipped:?}");
    }
    assert_eq!(prepared.skipped.total(), 5);
    assert!(prepared.skipped.summary().contains("img/missing.png"), "{}", prepared.skipped.summary());
    assert_eq!(index.skipped, skipped, "the index records the report");

    let data = PreparedDataset::open(&out).unwrap();
    assert_eq!(data.len(), 4);
    assert!(every_pixel_is(data.pixels(0), [255, 0, 0]));
    let blue = data.pixels(1);
    assert!(blue.chunks_exact(3).all(|p| p[0] < 8 && p[1] < 8 && p[2] > 247), "JPEG blue");
    assert!(every_pixel_is(data.pixels(3), [90, 90, 90]));
    assert_eq!(data.caption(0).caption, "a red square, plain", "quoted separators stay in the caption");
    assert_eq!(data.caption(0).key, "img/red.png");
    assert_eq!(data.tokens(0), tokenizer.tokenize("a red square, plain", 20, Truncation::ForceEot).unwrap());
    let cut = data.tokens(2);
    assert_eq!((cut[0], cut[19]), (tokenizer.sot(), tokenizer.eot()), "a long caption is cut with EOT last");

    // The folder is a dataset now: a second prepare into it is refused.
    let again = prepare(&input, &tokenizer, &config(&out, 24, 20), &mut |_, _| {});
    assert!(again.unwrap_err().to_string().contains("is not empty"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn listing_errors_name_the_columns_and_nothing_usable_is_an_error() {
    let dir = scratch("csv-bad");
    std::fs::write(dir.join("pairs.tsv"), "path\tcaption\nx.png\ta cat\n").unwrap();
    let tokenizer = Tokenizer::clip().unwrap();
    let input = Input::Listing(dir.join("pairs.tsv"), CsvFormat::open_clip());
    let message = prepare(&input, &tokenizer, &config(&dir.join("a"), 16, 8), &mut |_, _| {}).unwrap_err().to_string();
    assert!(message.contains("no column \"filepath\"") && message.contains("[\"path\", \"caption\"]"), "{message}");

    let format = CsvFormat { image_column: "path".into(), caption_column: "caption".into(), ..CsvFormat::open_clip() };
    let input = Input::Listing(dir.join("pairs.tsv"), format);
    let out = dir.join("b");
    let message = prepare(&input, &tokenizer, &config(&out, 16, 8), &mut |_, _| {}).unwrap_err().to_string();
    assert!(message.contains("no usable samples") && message.contains("1 missing image file"), "{message}");
    assert!(!out.join(INDEX_FILE).exists(), "no index for an empty dataset");
    let message = PreparedDataset::open(&out).err().unwrap().to_string();
    assert!(message.contains("did not finish"), "{message}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A tar member written with a raw header, so paths the `tar` crate's builder refuses
/// (absolute, `..`) can be tested.
fn append_raw(builder: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8]) {
    let mut header = tar::Header::new_old();
    header.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    builder.append(&header, data).unwrap();
}

#[test]
fn webdataset_tars_group_by_key_and_refuse_hostile_paths() {
    let dir = scratch("wds");
    let png = |rgb| encode(solid_rgb(30, 20, rgb), ImageFormat::Png);
    let mut first = tar::Builder::new(Vec::new());
    append_raw(&mut first, "s/0001.png", &png([255, 0, 0]));
    append_raw(&mut first, "s/0001.txt", b"a red square");
    append_raw(&mut first, "s/0002.txt", b"a caption without its image");
    append_raw(&mut first, "s/0003.jpg", &encode(solid_rgb(30, 20, [0, 255, 0]), ImageFormat::Jpeg));
    append_raw(&mut first, "../0004.png", &png([9, 9, 9]));
    append_raw(&mut first, "/etc/0005.txt", b"absolute");
    std::fs::write(dir.join("part-0.tar"), first.into_inner().unwrap()).unwrap();
    let mut second = tar::Builder::new(Vec::new());
    append_raw(&mut second, "0006.png", &png([0, 0, 255]));
    append_raw(&mut second, "0006.json", b"{}");
    append_raw(&mut second, "0006.txt", b"  a blue square \n");
    append_raw(&mut second, "0007.png", &png([1, 2, 3]));
    append_raw(&mut second, "0007.txt", b"   ");
    std::fs::write(dir.join("part-1.tar"), second.into_inner().unwrap()).unwrap();

    let tars = vec![dir.join("part-0.tar"), dir.join("part-1.tar")];
    let out = dir.join("prepared");
    let prepared =
        prepare(&Input::Tars(tars), &Tokenizer::clip().unwrap(), &config(&out, 8, 16), &mut |_, _| {}).unwrap();
    let skipped = prepared.skipped.counts();
    for (reason, count) in [
        ("sample without an image (jpg, jpeg, png, webp)", 1),
        ("sample without a caption (txt)", 1),
        ("unsafe tar path (absolute or ..)", 2),
        ("empty caption", 1),
    ] {
        assert_eq!(skipped.get(reason), Some(&count), "{reason}: {skipped:?}");
    }
    let data = PreparedDataset::open(&out).unwrap();
    assert_eq!(data.len(), 2);
    assert_eq!(data.caption(0).caption, "a red square");
    assert!(data.caption(0).key.ends_with("part-0.tar:s/0001"), "{}", data.caption(0).key);
    assert_eq!(data.caption(1).caption, "a blue square");
    assert!(every_pixel_is(data.pixels(1), [0, 0, 255]));
    assert!(!dir.join("0004.png").exists() && !Path::new("/etc/0005.txt").exists(), "nothing is extracted");

    // A damaged shard is refused by size.
    let pixels = out.join("shard-00000.pixels");
    let len = std::fs::metadata(&pixels).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&pixels).unwrap().set_len(len - 1).unwrap();
    let message = PreparedDataset::open(&out).err().unwrap().to_string();
    assert!(message.contains("the dataset is damaged"), "{message}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_prepare_command_reports_rate_and_skips_and_refuses_bad_flags() {
    let dir = scratch("cli");
    std::fs::write(dir.join("a.png"), encode(solid_rgb(30, 20, [5, 6, 7]), ImageFormat::Png)).unwrap();
    std::fs::write(dir.join("pairs.tsv"), "filepath\ttitle\na.png\ta small picture\nb.png\tgone\n").unwrap();
    let msclip = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_msclip")).current_dir(&dir).args(args).output().unwrap()
    };
    let out = msclip(&["prepare", "--input", "pairs.tsv", "--out", "d", "--resolution", "16"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for want in [
        "1 samples in 1 shard(s) at 16 px, context 77",
        "images/s",
        "skipped 1 sample(s)",
        "1 missing image file (e.g. b.png)",
    ] {
        assert!(stdout.contains(want), "expected {want:?} in:\n{stdout}");
    }
    assert_eq!(PreparedDataset::open(&dir.join("d")).unwrap().len(), 1);
    for (args, want) in [
        (&["prepare", "--input", "nope.tsv", "--out", "e"][..], "no such file or folder"),
        (&["prepare", "--input", "s-{0..1}.tar", "--out", "e"], "s-0.tar does not exist"),
        (&["prepare", "--input", "pairs.tsv", "--out", "e", "--resolution", "4"], "between 8 and 4096"),
        (&["prepare", "--input", "pairs.tsv", "--out", "e", "--csv-separator", "::"], "--csv-separator"),
        (&["prepare", "--input", "pairs.tsv", "--out", "d"], "is not empty"),
    ] {
        let out = msclip(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(want), "{args:?}: expected {want:?} in:\n{stderr}");
    }
    assert!(!dir.join("e").exists(), "a refused prepare writes nothing");
    let _ = std::fs::remove_dir_all(&dir);
}
