//! The shapes world: determinism, the hold-outs each split promises, captions that match
//! their scenes, pixels that match their labels, any resolution, binding and relation
//! swaps, the preview sheet, config validation, zero-shot prompts and the tokenizer corpus.

use std::collections::HashSet;

use msclip::Error;
use msclip::data::shapes::*;

/// A config that draws two-object training scenes often, so second objects get checked.
fn busy() -> ShapesConfig {
    ShapesConfig { image_size: 16, two_object_prob: 0.5, ..ShapesConfig::default() }
}

fn words(text: &str) -> Vec<&str> {
    text.split(' ').collect()
}

fn plural(noun: &str) -> String {
    if noun.ends_with('s') || noun.ends_with('x') { format!("{noun}es") } else { format!("{noun}s") }
}

const NUMBERS: [&str; 5] = ["one", "two", "three", "four", "five"];
const HELD_OUT_WORDS: [&str; 7] = ["snapshot", "illustration", "sketch", "box", "boxes", "rhombus", "rhombuses"];

#[test]
fn a_sample_is_a_pure_function_of_split_and_index() {
    let cfg = ShapesConfig::default();
    for split in Split::ALL {
        let a = sample(&cfg, split, 17);
        assert_eq!(a, sample(&cfg, split, 17), "{split:?}");
        assert_ne!(a.image, sample(&cfg, split, 18).image, "{split:?}");
    }
    let batch = samples(&cfg, Split::Train, 10..20);
    let one_by_one: Vec<Sample> = (10..20).map(|i| sample(&cfg, Split::Train, i)).collect();
    assert_eq!(batch, one_by_one);
    assert_ne!(sample(&cfg, Split::Train, 5).image, sample(&cfg, Split::Seen, 5).image);
    let other_seed = ShapesConfig { seed: 1, ..cfg.clone() };
    assert_ne!(sample(&cfg, Split::Train, 5).image, sample(&other_seed, Split::Train, 5).image);
}

#[test]
fn the_colour_shape_hold_out_is_balanced() {
    let held: Vec<(usize, usize)> =
        (0..8).flat_map(|c| (0..8).map(move |s| (c, s))).filter(|&(c, s)| is_held_out(c, s)).collect();
    assert_eq!(held.len(), 16);
    for k in 0..8 {
        assert_eq!(held.iter().filter(|p| p.0 == k).count(), 2, "colour {k}");
        assert_eq!(held.iter().filter(|p| p.1 == k).count(), 2, "shape {k}");
    }
    assert!(!is_held_out(8, 0) && !is_held_out(0, 99));
}

#[test]
fn training_never_shows_a_held_out_composition() {
    let cfg = busy();
    let train = samples(&cfg, Split::Train, 0..5000);
    let mut pairs_seen = HashSet::new();
    let mut second_objects = 0;
    for s in &train {
        for (k, o) in s.scene.objects.iter().enumerate() {
            assert!(!is_held_out(o.colour.index(), o.shape.index()), "{:?} {:?} in training", o.colour, o.shape);
            assert!(!is_held_out_texture(o.texture, o.shape), "{:?} {:?} in training", o.texture, o.shape);
            assert!(!is_held_out_placement(o.size, o.position), "large in the corner in training");
            pairs_seen.insert((o.colour, o.shape));
            second_objects += usize::from(k > 0 && matches!(s.scene.layout, Layout::Pair { .. }));
        }
        if let Layout::Copies { count } = s.scene.layout {
            assert!((1..HELD_OUT_COUNT).contains(&count), "count {count} in training");
            assert_eq!(s.scene.objects.len(), count);
        }
    }
    assert_eq!(pairs_seen.len(), 48, "every held-in pair appears");
    assert!(second_objects > 2000, "only {second_objects} second objects checked");
}

#[test]
fn evaluation_splits_keep_to_their_compositions() {
    let cfg = busy();
    let unseen = samples(&cfg, Split::Unseen, 0..800);
    let pairs: HashSet<_> = unseen.iter().flat_map(|s| s.scene.objects.iter().map(|o| (o.colour, o.shape))).collect();
    assert_eq!(pairs.len(), 16, "every held-out pair appears");
    assert!(pairs.iter().all(|(c, s)| is_held_out(c.index(), s.index())));
    for split in [Split::Seen, Split::UnseenTemplate] {
        for s in samples(&cfg, split, 0..300) {
            assert!(matches!(s.scene.layout, Layout::Copies { .. }));
            assert!(s.scene.objects.iter().all(|o| !is_held_out(o.colour.index(), o.shape.index())));
        }
    }
    for s in samples(&cfg, Split::Binding, 0..300) {
        let [a, b] = s.scene.objects.as_slice() else { panic!("binding needs two objects") };
        assert_eq!(s.scene.layout, Layout::Pair { relation: None });
        assert!(a.colour != b.colour && a.shape != b.shape);
        for (c, sh) in [(a.colour, a.shape), (b.colour, b.shape), (a.colour, b.shape), (b.colour, a.shape)] {
            assert!(!is_held_out(c.index(), sh.index()), "swap would mention held-out {c:?} {sh:?}");
        }
    }
    for s in samples(&cfg, Split::Relation, 0..300) {
        let [a, b] = s.scene.objects.as_slice() else { panic!("relation needs two objects") };
        let Layout::Pair { relation: Some(relation) } = s.scene.layout else { panic!("no relation") };
        let (ra, ca, rb, cb) = (a.position.row(), a.position.col(), b.position.row(), b.position.col());
        let holds = match relation {
            Relation::LeftOf => ra == rb && ca < cb && a.centre[0] < b.centre[0],
            Relation::RightOf => ra == rb && ca > cb && a.centre[0] > b.centre[0],
            Relation::Above => ca == cb && ra < rb && a.centre[1] < b.centre[1],
            Relation::Below => ca == cb && ra > rb && a.centre[1] > b.centre[1],
        };
        assert!(holds, "{relation:?} does not hold: {:?} {:?}", a.position, b.position);
        assert!(a.colour != b.colour && a.shape != b.shape);
    }
    for s in samples(&cfg, Split::Extrapolate, 0..300) {
        let o = &s.scene.objects[0];
        let stretches = [
            is_held_out_texture(o.texture, o.shape),
            is_held_out_placement(o.size, o.position),
            s.scene.layout == Layout::Copies { count: HELD_OUT_COUNT },
        ];
        assert_eq!(stretches.iter().filter(|&&x| x).count(), 1, "{:?}", s.scene);
        assert!(!is_held_out(o.colour.index(), o.shape.index()));
    }
}

#[test]
fn captions_name_the_scene_and_keep_held_out_words_out_of_training() {
    let cfg = busy();
    for split in [Split::Train, Split::Seen, Split::Unseen, Split::UnseenTemplate] {
        for s in samples(&cfg, split, 0..1500) {
            let said = words(&s.caption);
            let count = match s.scene.layout {
                Layout::Copies { count } => count,
                Layout::Pair { .. } => 1,
            };
            let objects = if count > 1 { &s.scene.objects[..1] } else { &s.scene.objects[..] };
            for o in objects {
                let noun = match (split, o.shape) {
                    (Split::UnseenTemplate, ShapeKind::Square) => "box",
                    (Split::UnseenTemplate, ShapeKind::Diamond) => "rhombus",
                    _ => o.shape.word(),
                };
                let noun = if count > 1 { plural(noun) } else { noun.to_string() };
                assert!(said.contains(&o.colour.word()), "{:?} lacks {:?}", s.caption, o.colour);
                assert!(said.contains(&noun.as_str()), "{:?} lacks {noun}", s.caption);
            }
            let held_out_said = said.iter().any(|w| HELD_OUT_WORDS.contains(w));
            if split == Split::UnseenTemplate {
                assert!(["snapshot", "illustration", "sketch"].iter().any(|w| said.contains(w)), "{:?}", s.caption);
            } else {
                assert!(!held_out_said, "held-out wording in {split:?}: {:?}", s.caption);
            }
        }
    }
}

#[test]
fn counts_use_number_words_and_plurals() {
    let cfg = ShapesConfig { image_size: 16, two_object_prob: 0.0, ..ShapesConfig::default() };
    let mut numbers_said = HashSet::new();
    for s in samples(&cfg, Split::Train, 0..2000) {
        let Layout::Copies { count } = s.scene.layout else { unreachable!("no pairs at two_object_prob 0") };
        let said = words(&s.caption);
        let noun = s.scene.objects[0].shape.word();
        let plural = plural(noun);
        if count == 1 {
            assert!(said.contains(&noun) && !said.contains(&plural.as_str()), "{:?}", s.caption);
        } else {
            assert!(said.contains(&plural.as_str()) && !said.contains(&noun), "{:?}", s.caption);
        }
        for (k, number) in NUMBERS.iter().enumerate() {
            if said.contains(number) {
                assert_eq!(k + 1, count, "{:?} for {count} copies", s.caption);
                numbers_said.insert(k + 1);
            }
        }
    }
    assert_eq!(numbers_said, (1..=4).collect(), "every training count is said");
    let tiny = ShapesConfig::tiny();
    for s in samples(&tiny, Split::Train, 0..500) {
        assert_eq!(s.scene.layout, Layout::Copies { count: 1 });
        assert!(!words(&s.caption).contains(&"one"), "counts are off: {:?}", s.caption);
    }
}

fn pixel(s: &Sample, size: usize, x: usize, y: usize) -> [u8; 3] {
    let i = (y * size + x) * 3;
    [s.image[i], s.image[i + 1], s.image[i + 2]]
}

fn l1(a: [u8; 3], b: [u8; 3]) -> u32 {
    a.iter().zip(b).map(|(&x, y)| u32::from(x.abs_diff(y))).sum()
}

#[test]
fn pixels_show_the_object_colour_on_a_different_background() {
    let size = 64;
    let cfg = ShapesConfig {
        image_size: size,
        max_count: 1,
        textures: false,
        noise: 0.0,
        max_rotation_deg: 0.0,
        ..ShapesConfig::default()
    };
    for s in samples(&cfg, Split::Seen, 0..300) {
        let o = &s.scene.objects[0];
        let (cx, cy) = (o.centre[0] * size as f32, o.centre[1] * size as f32);
        let inside = pixel(&s, size, cx as usize, cy as usize);
        assert!(l1(inside, o.rgb) <= 12, "{:?} {:?}: centre {inside:?} vs {:?}", o.colour, o.shape, o.rgb);
        let reach = o.radius * size as f32 + 2.0;
        for y in 0..size {
            for x in 0..size {
                if (x as f32 + 0.5 - cx).hypot(y as f32 + 0.5 - cy) > reach {
                    let bg = pixel(&s, size, x, y);
                    assert!(l1(bg, o.rgb) >= 60, "{:?} on {:?}: {bg:?} vs {:?}", o.colour, s.scene.background, o.rgb);
                }
            }
        }
    }
}

#[test]
fn any_resolution_renders_the_same_scene() {
    let reference = sample(&ShapesConfig::default(), Split::Train, 3);
    for size in [16, 33, 224] {
        let cfg = ShapesConfig { image_size: size, ..ShapesConfig::default() };
        let s = sample(&cfg, Split::Train, 3);
        assert_eq!(s.image.len(), size * size * 3);
        assert_eq!((&s.scene, &s.caption), (&reference.scene, &reference.caption), "layouts are resolution-free");
        let distinct: HashSet<&[u8]> = s.image.chunks_exact(3).collect();
        assert!(distinct.len() > 4, "{size} px image is nearly constant");
    }
}

/// The words of a text, sorted, with "an" counted as "a" (an article follows the word after
/// it: "an orange", "a purple").
fn bag(text: &str) -> Vec<&str> {
    let mut w: Vec<&str> = words(text).into_iter().map(|w| if w == "an" { "a" } else { w }).collect();
    w.sort();
    w
}

#[test]
fn binding_and_relation_swaps_are_real_swaps() {
    let cfg = ShapesConfig::default();
    for i in 0..200 {
        let (s, swapped) = binding_pair(&cfg, i);
        assert_eq!(s, sample(&cfg, Split::Binding, i));
        let [a, b] = s.scene.objects.as_slice() else { panic!("binding needs two objects") };
        let phrase = |c: Colour, sh: ShapeKind| format!("{} {}", c.word(), sh.word());
        assert!(s.caption.contains(&phrase(a.colour, a.shape)) && s.caption.contains(&phrase(b.colour, b.shape)));
        assert!(swapped.contains(&phrase(b.colour, a.shape)) && swapped.contains(&phrase(a.colour, b.shape)));
        assert_ne!(s.caption, swapped);
        assert_eq!(bag(&s.caption), bag(&swapped), "a swap changes word order only");

        let (s, swapped) = relation_pair(&cfg, i);
        let [a, b] = s.scene.objects.as_slice() else { panic!("relation needs two objects") };
        let Layout::Pair { relation: Some(relation) } = s.scene.layout else { panic!("no relation") };
        let (pa, pb) = (phrase(a.colour, a.shape), phrase(b.colour, b.shape));
        let rel = relation.word();
        let in_order = |text: &str, first: &str, second: &str| {
            let after = text.find(&format!("{first} {rel} ")).map(|i| &text[i..]);
            after.is_some_and(|rest| rest.contains(&format!(" {second}")))
        };
        assert!(in_order(&s.caption, &pa, &pb), "{}", s.caption);
        assert!(in_order(&swapped, &pb, &pa), "{swapped}");
    }
}

#[test]
fn preview_is_a_png_of_its_layout() {
    let dir = std::env::temp_dir().join(format!("msclip-shapes-preview-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("preview.png");
    let cfg = ShapesConfig::tiny();
    write_preview(&path, &cfg, Split::Train, 7).unwrap();
    let layout = PreviewLayout::new(cfg.image_size, 7);
    assert_eq!((layout.columns, layout.rows), (3, 3));
    let mut reader =
        png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&path).unwrap())).read_info().unwrap();
    let mut pixels = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut pixels).unwrap();
    assert_eq!((info.width as usize, info.height as usize), (layout.width, layout.height));
    assert_eq!(info.color_type, png::ColorType::Rgb);
    assert!(pixels.chunks_exact(3).any(|p| p == [0, 0, 0]), "captions are drawn in black");
    let left: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left, vec![std::ffi::OsString::from("preview.png")], "no temporary file is left");

    assert!(matches!(write_preview(&path, &cfg, Split::Train, 0), Err(Error::Invalid { .. })));
    let bad = ShapesConfig { image_size: 0, ..cfg.clone() };
    assert!(matches!(write_preview(&path, &bad, Split::Train, 4), Err(Error::Config(_))));
    assert!(matches!(write_preview(&dir.join("missing/p.png"), &cfg, Split::Train, 1), Err(Error::Io { .. })));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn hard_negative_groups_differ_only_in_shape() {
    let cfg = ShapesConfig { hard_negative_group: 6, ..ShapesConfig::tiny() };
    cfg.validate().unwrap();
    let train = samples(&cfg, Split::Train, 0..60);
    let mut group_looks = HashSet::new();
    for group in train.chunks(6) {
        let objects: Vec<&Object> = group.iter().map(|s| &s.scene.objects[0]).collect();
        let first = objects[0];
        for o in &objects {
            assert_eq!((o.colour, o.size, o.position), (first.colour, first.size, first.position));
            assert!(!is_held_out(o.colour.index(), o.shape.index()), "{o:?}");
        }
        let shapes: HashSet<ShapeKind> = objects.iter().map(|o| o.shape).collect();
        assert_eq!(shapes.len(), 6, "every member has its own shape");
        assert_ne!(group[0].image, group[1].image);
        group_looks.insert((first.colour, first.size, first.position));
    }
    assert!(group_looks.len() > 5, "groups draw their own look: {group_looks:?}");
    // One sample alone is the one the batch made; evaluation splits are never grouped.
    assert_eq!(sample(&cfg, Split::Train, 13), train[13]);
    let ungrouped = ShapesConfig { hard_negative_group: 1, ..ShapesConfig::tiny() };
    for split in [Split::Seen, Split::Unseen, Split::Binding] {
        assert_eq!(sample(&cfg, split, 3), sample(&ungrouped, split, 3), "{split:?}");
    }
}

#[test]
fn colour_dropout_leaves_colour_out_of_training_captions_only() {
    let says_colour = |s: &Sample| words(&s.caption).contains(&s.scene.objects[0].colour.word());
    let says_shape = |s: &Sample| words(&s.caption).contains(&s.scene.objects[0].shape.word());
    let cfg = ShapesConfig { colour_dropout: 0.5, hard_negative_group: 1, ..ShapesConfig::tiny() };
    cfg.validate().unwrap();
    let train = samples(&cfg, Split::Train, 0..200);
    let with_colour = train.iter().filter(|s| says_colour(s)).count();
    assert!((60..140).contains(&with_colour), "about half keep the colour: {with_colour} of 200");
    assert!(train.iter().all(says_shape));
    for split in [Split::Seen, Split::Unseen] {
        assert!(samples(&cfg, split, 0..50).iter().all(|s| says_colour(s) && says_shape(s)), "{split:?}");
    }
    // Off, the captions are those drawn before the knob existed (no extra random draw):
    // these three come from the code of 2026-12-05 before colour dropout and grouping.
    let before = ShapesConfig { colour_dropout: 0.0, hard_negative_group: 1, ..ShapesConfig::tiny() };
    let off: Vec<String> = samples(&before, Split::Train, 0..3).into_iter().map(|s| s.caption).collect();
    assert_eq!(
        off,
        [
            "an image of the large yellow triangle at the top",
            "a photo of the medium yellow star in the top left",
            "a drawing of a large orange triangle"
        ]
    );
}

#[test]
fn bad_configs_are_clear_errors() {
    ShapesConfig::default().validate().unwrap();
    ShapesConfig::tiny().validate().unwrap();
    let cases = [
        (ShapesConfig { image_size: 0, ..ShapesConfig::default() }, "image_size"),
        (ShapesConfig { max_count: 0, ..ShapesConfig::default() }, "max_count"),
        (ShapesConfig { max_count: 6, ..ShapesConfig::default() }, "max_count"),
        (ShapesConfig { caption_dropout: 1.5, ..ShapesConfig::default() }, "caption_dropout"),
        (ShapesConfig { noise: f64::NAN, ..ShapesConfig::default() }, "noise"),
        (ShapesConfig { max_rotation_deg: -1.0, ..ShapesConfig::default() }, "max_rotation_deg"),
        (ShapesConfig { colour_dropout: -0.1, ..ShapesConfig::default() }, "colour_dropout"),
        (ShapesConfig { hard_negative_group: 0, ..ShapesConfig::tiny() }, "hard_negative_group"),
        (ShapesConfig { hard_negative_group: 7, ..ShapesConfig::tiny() }, "hard_negative_group"),
        (ShapesConfig { hard_negative_group: 2, ..ShapesConfig::default() }, "hard_negative_group"),
    ];
    for (cfg, field) in cases {
        match cfg.validate() {
            Err(Error::Config(message)) => assert!(message.contains(field), "{message}"),
            other => panic!("{field}: expected a config error, got {other:?}"),
        }
        // Unvalidated, generation still neither fails nor panics.
        for split in Split::ALL {
            let s = sample(&cfg, split, 1);
            assert_eq!(s.image.len(), cfg.image_size * cfg.image_size * 3);
        }
    }
    let wild = ShapesConfig {
        image_size: 20,
        size_jitter: -40.0,
        position_jitter: 1e9,
        colour_jitter: f64::NAN,
        max_rotation_deg: f64::INFINITY,
        ..ShapesConfig::default()
    };
    assert!(wild.validate().is_err());
    for split in Split::ALL {
        assert_eq!(samples(&wild, split, 0..20).len(), 20);
    }
}

#[test]
fn zero_shot_factors_label_and_prompt_every_class() {
    let factors = zero_shot_factors();
    let sizes: Vec<(&str, usize)> = factors.iter().map(|f| (f.name, f.classes.len())).collect();
    assert_eq!(
        sizes,
        [("shape", 8), ("colour", 8), ("size", 3), ("position", 9), ("texture", 4), ("count", 5), ("colour_shape", 64)]
    );
    for f in &factors {
        assert!(f.templates.iter().all(|t| t.matches("{}").count() == 1), "{}", f.name);
        for c in 0..f.classes.len() {
            for p in f.prompts(c) {
                assert!(!p.contains("a orange") && !p.contains("a outlined") && !p.contains("one circles"), "{p}");
            }
        }
        assert!(f.prompts(f.classes.len()).is_empty());
    }
    let colour = &factors[1];
    assert!(colour.prompts(Colour::Orange.index()).contains(&"a photo of an orange circle".to_string()));
    let count = &factors[5];
    assert!(count.prompts(0).contains(&"a photo of one red circle".to_string()));
    assert!(count.prompts(2).contains(&"a photo of three purple crosses".to_string()));
    let texture = &factors[4];
    assert!(texture.prompts(Texture::Outlined.index()).contains(&"a drawing of a blue outlined heart".to_string()));
    // Prompts name a held-in colour-shape pair wherever the class is not colour or shape.
    for f in factors.iter().filter(|f| !matches!(f.name, "shape" | "colour" | "colour_shape")) {
        for p in f.prompts(0) {
            let said = words(&p);
            let colour = Colour::ALL.iter().position(|c| said.contains(&c.word())).expect("a colour");
            let shape = ShapeKind::ALL
                .iter()
                .position(|s| said.contains(&s.word()) || said.contains(&plural(s.word()).as_str()));
            assert!(!is_held_out(colour, shape.expect("a shape")), "{p}");
        }
    }

    let cfg = ShapesConfig { caption_dropout: 0.0, ..busy() };
    for s in samples(&cfg, Split::Seen, 0..200) {
        for f in &factors {
            let Some(label) = label_of(&s.scene, f.name) else { continue };
            let class = &f.classes[label];
            // With no dropout every factor is said by its class name ("one" only when counts
            // are on and never for the joint factor, whose words a texture may separate).
            let said = match f.name {
                "count" if label == 0 => true,
                "colour_shape" => continue,
                "count" => s.caption.split(' ').any(|w| w == class),
                _ => s.caption.contains(class.as_str()),
            };
            assert!(said, "{}: {class} not in {:?}", f.name, s.caption);
        }
        let multi = matches!(s.scene.layout, Layout::Copies { count } if count > 1);
        assert_eq!(label_of(&s.scene, "position").is_none(), multi);
    }
    let pair = sample(&cfg, Split::Binding, 0);
    assert_eq!(label_of(&pair.scene, "count"), None);
    assert_eq!(label_of(&pair.scene, "flavour"), None);
}

#[test]
fn the_corpus_holds_every_word_evaluation_uses() {
    for cfg in [ShapesConfig::default(), ShapesConfig::tiny()] {
        let corpus = caption_corpus(&cfg, 0);
        let vocabulary: HashSet<&str> = corpus.iter().flat_map(|line| line.split(' ')).collect();
        let mut texts: Vec<String> = Vec::new();
        for split in Split::ALL {
            texts.extend(samples(&cfg, split, 0..300).into_iter().map(|s| s.caption));
        }
        for i in 0..100 {
            texts.push(binding_pair(&cfg, i).1);
            texts.push(relation_pair(&cfg, i).1);
        }
        for text in &texts {
            for word in text.split(' ') {
                assert!(vocabulary.contains(word), "{word:?} of {text:?} is not in the corpus");
            }
        }
        let with_training = caption_corpus(&cfg, 50);
        for (i, line) in with_training.iter().take(50).enumerate() {
            assert_eq!(*line, sample(&cfg, Split::Train, i as u64).caption);
        }
        assert_eq!(with_training.len(), corpus.len() + 50);
    }
}
