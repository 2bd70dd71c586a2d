//! Every bad input the agent can be given, with the exact message and exit
//! code it answers with: configuration, destinations, secrets, the model,
//! the outbox path, and broken video. Each is a clear message on stderr,
//! nothing on stdout, no panic, and no outbox left behind. The README's
//! table of bad inputs is this table.

use crate::util::{run_command, MINUTE};
use std::path::Path;

const GOOD_SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

/// A PNG of `w x h` flat skin colour.
fn png(path: &Path, w: u32, h: u32) {
    let img = image::RgbImage::from_pixel(w, h, image::Rgb([120, 90, 80]));
    img.save(path).unwrap();
}

/// A case: files to write, the arguments, the exit code and the whole stderr.
struct Case {
    name: &'static str,
    files: Vec<(&'static str, Vec<u8>)>,
    args: Vec<&'static str>,
    env: Vec<(&'static str, &'static str)>,
    code: i32,
    stderr: &'static str,
}

/// A PNG that declares `w x h` pixels in its header (the rest is a 1x1
/// image's: a decoder that sized its buffer from the header first would
/// allocate the whole declared frame).
fn png_declaring(w: u32, h: u32) -> Vec<u8> {
    let mut bytes = Vec::new();
    image::RgbImage::from_pixel(1, 1, image::Rgb([1, 2, 3]))
        .write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Png,
        )
        .unwrap();
    bytes[16..20].copy_from_slice(&w.to_be_bytes());
    bytes[20..24].copy_from_slice(&h.to_be_bytes());
    let crc = crc32(&bytes[12..29]);
    bytes[29..33].copy_from_slice(&crc.to_be_bytes());
    bytes
}

/// CRC-32 (IEEE), as PNG chunks carry it.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A 64x48 JPEG cut inside its image data (a copy interrupted, an SD card
/// write lost).
fn truncated_jpeg() -> Vec<u8> {
    let mut bytes = Vec::new();
    let img = image::RgbImage::from_fn(64, 48, |x, y| {
        image::Rgb([(x * 4) as u8, (y * 5) as u8, 90])
    });
    img.write_to(
        &mut std::io::Cursor::new(&mut bytes),
        image::ImageFormat::Jpeg,
    )
    .unwrap();
    let scan = bytes.windows(2).rposition(|w| w == [0xFF, 0xDA]).unwrap();
    bytes.truncate(scan + (bytes.len() - scan) / 2);
    bytes
}

fn hook(extra: &str) -> Vec<u8> {
    format!("[[webhook]]\nname = \"a\"\n{extra}").into_bytes()
}

fn cases() -> Vec<Case> {
    let toml = |name, text: &str| vec![(name, text.as_bytes().to_vec())];
    vec![
        Case {
            name: "unknown key",
            files: toml("c.toml", "[scan]\nduraton_s = 30\n"),
            args: vec!["config", "check", "c.toml"],
            env: vec![],
            code: 2,
            stderr: "error: invalid configuration (1 problem):\n  scan.duraton_s (c.toml): unknown key\n    fix: did you mean `duration_s`? (see `rppg-agent config default`)",
        },
        Case {
            name: "invalid value",
            files: toml("c.toml", "[scan]\nduration_s = \"long\"\n"),
            args: vec!["config", "check", "c.toml"],
            env: vec![],
            code: 2,
            stderr: "error: invalid configuration (1 problem):\n  scan.duration_s (c.toml): must be a number, found a string\n    fix: use a value like the default: duration_s = 30.0",
        },
        Case {
            name: "invalid value in the environment",
            files: vec![],
            args: vec!["scan", "--input", "synthetic:seconds=1", "--json"],
            env: vec![("RPPG_SCAN_DURATION_S", "abc")],
            code: 2,
            stderr: "error: invalid configuration (1 problem):\n  scan.duration_s (RPPG_SCAN_DURATION_S): \"abc\" is not a number\n    fix: set it like the default: RPPG_SCAN_DURATION_S=30.0",
        },
        Case {
            name: "missing configuration file",
            files: vec![],
            args: vec!["scan", "--input", "synthetic:seconds=1", "--config", "nope.toml"],
            env: vec![],
            code: 2,
            stderr: "error: cannot read configuration file nope.toml: No such file or directory (os error 2)",
        },
        Case {
            name: "missing required key",
            files: vec![("c.toml", hook(&format!("secrets = [\"{GOOD_SECRET}\"]\n")))],
            args: vec!["config", "check", "c.toml"],
            env: vec![],
            code: 2,
            stderr: "error: invalid configuration (1 problem):\n  webhook[0].url (configuration): is required but missing\n    fix: see the [[webhook]] keys in `rppg-agent config default`",
        },
        Case {
            name: "http URL without allow_insecure",
            files: vec![("c.toml", hook(&format!("url = \"http://example.com/h\"\nsecrets = [\"{GOOD_SECRET}\"]\n")))],
            args: vec!["config", "check", "c.toml"],
            env: vec![],
            code: 2,
            stderr: "error: invalid configuration (1 problem):\n  webhook[0].url (configuration): http://example.com/h is plain http; events would travel unencrypted\n    fix: use https, or set allow_insecure = true for a clinic LAN or loopback receiver",
        },
        Case {
            name: "unknown signature scheme",
            files: vec![("c.toml", hook(&format!("url = \"https://example.com/h\"\nsecrets = [\"{GOOD_SECRET}\"]\nschemes = [\"hmac-md5\"]\n")))],
            args: vec!["config", "check", "c.toml"],
            env: vec![],
            code: 2,
            stderr: "error: invalid configuration (1 problem):\n  webhook[0].schemes (configuration): \"hmac-md5\" is not a signature scheme\n    fix: use standard, wms, rppg or api-key",
        },
        Case {
            name: "empty secret",
            files: vec![("c.toml", hook("url = \"https://example.com/h\"\nsecrets = [\"\"]\n"))],
            args: vec!["config", "check", "c.toml"],
            env: vec![],
            code: 2,
            stderr: "error: invalid configuration (1 problem):\n  webhook[0].secrets (configuration): secret #1 for scheme standard: the secret is empty\n    fix: check the secret's format",
        },
        Case {
            name: "secret variable set but empty",
            files: vec![("c.toml", hook("url = \"https://example.com/h\"\nsecret_env = [\"TEST_BAD_SECRET\"]\n"))],
            args: vec!["config", "check", "c.toml"],
            env: vec![("TEST_BAD_SECRET", "")],
            code: 2,
            stderr: "error: invalid configuration (1 problem):\n  webhook[0].secret_env (configuration): environment variable TEST_BAD_SECRET is not set or empty\n    fix: export it before starting the agent (e.g. in the systemd unit's EnvironmentFile)",
        },
        Case {
            name: "secret of the wrong format",
            files: vec![("c.toml", hook("url = \"https://example.com/h\"\nsecrets = [\"nobase64!\"]\n"))],
            args: vec!["config", "check", "c.toml"],
            env: vec![],
            code: 2,
            stderr: "error: invalid configuration (1 problem):\n  webhook[0].secrets (configuration): secret #1 for scheme standard: a standard-webhooks secret must look like whsec_<base64>; this one does not start with whsec_\n    fix: check the secret's format",
        },
        Case {
            name: "bad model file",
            files: vec![
                ("model.bin", b"garbage\n".to_vec()),
                ("c.toml", b"[vision]\nmodel_path = \"model.bin\"\n".to_vec()),
            ],
            args: vec!["scan", "--input", "synthetic:seconds=1", "--config", "c.toml", "--json"],
            env: vec![],
            code: 2,
            stderr: "error: face model model.bin failed its integrity check (8 bytes, sha256 233d4809807d21d1b24ae54639eede42f519dcbe35ca71d51bd051bca59c6a68, expected c4619d066ed35e84d9a8e842860b0dff567aba0cbb139881075538761db3ff5d); restore models/seeta_fd_frontal_v1.0.bin or unset vision.model_path to use the built-in model",
        },
        Case {
            name: "outbox path under a file",
            files: vec![
                ("plain-file", b"x".to_vec()),
                ("c.toml", [b"[outbox]\npath = \"plain-file/outbox\"\n".to_vec(), hook(&format!("url = \"https://example.com/h\"\nsecrets = [\"{GOOD_SECRET}\"]\n"))].concat()),
            ],
            args: vec!["scan", "--input", "synthetic:seconds=1", "--config", "c.toml", "--json"],
            env: vec![],
            code: 2,
            stderr: "error: cannot create the outbox directory plain-file/outbox: plain-file is a file, not a directory; set outbox.path to a writable directory",
        },
        Case {
            name: "y4m header geometry that does not match the frames",
            files: vec![("geom.y4m", [b"YUV4MPEG2 W64 H48 F30:1 C420jpeg\n".to_vec(), [b"FRAME\n".to_vec(), vec![0u8; 32 * 24 * 3 / 2]].concat().repeat(40)].concat())],
            args: vec!["scan", "--input", "geom.y4m", "--json"],
            env: vec![],
            code: 2,
            stderr: "error: geom.y4m: frame 1: expected a FRAME marker (is the frame size in the header right?)",
        },
        Case {
            name: "a y4m frame rate of one frame in 136 years",
            files: vec![("slow.y4m", [b"YUV4MPEG2 W64 H48 F1:4294967295 C420jpeg\n".to_vec(), [b"FRAME\n".to_vec(), vec![0u8; 64 * 48 * 3 / 2]].concat().repeat(2)].concat())],
            args: vec!["scan", "--input", "slow.y4m", "--json"],
            env: vec![],
            code: 2,
            stderr: "error: slow.y4m: bad header: frame rate 1:4294967295 (2.328e-10 fps) is outside 1..1000 fps",
        },
        Case {
            name: "a y4m frame header line without end",
            files: vec![("long.y4m", [b"YUV4MPEG2 W64 H48 F30:1 C420jpeg\nFRAME ".to_vec(), vec![b'x'; 10_000]].concat())],
            args: vec!["scan", "--input", "long.y4m", "--json"],
            env: vec![],
            code: 2,
            stderr: "error: long.y4m: frame 0: frame header line is longer than 4096 bytes",
        },
        Case {
            name: "a frame that declares 12000x12000 pixels",
            files: vec![("big/0001.png", png_declaring(12_000, 12_000))],
            args: vec!["scan", "--input", "frames:big", "--json"],
            env: vec![],
            code: 2,
            stderr: "error: big/0001.png: frame 0: 12000x12000 is more than the 67108864 pixels accepted",
        },
        Case {
            name: "a truncated JPEG frame",
            files: vec![("cut/0001.jpg", truncated_jpeg())],
            args: vec!["scan", "--input", "frames:cut", "--json"],
            env: vec![],
            code: 2,
            stderr: "error: cut/0001.jpg: frame 0: the JPEG is truncated (no end-of-image marker after its image data)",
        },
        Case {
            name: "waits and rates too large to be durations",
            files: vec![("c.toml", [b"[signal]\nresample_hz = 1e7\n[delivery]\nprobe_max_s = 1e20\n".to_vec(), hook(&format!("url = \"https://example.com/h\"\nsecrets = [\"{GOOD_SECRET}\"]\nretry_schedule_s = [0, 1e20]\ntimeout_s = 1e20\n"))].concat())],
            args: vec!["config", "check", "c.toml"],
            env: vec![],
            code: 2,
            stderr: "error: invalid configuration (4 problems):\n  webhook[0].retry_schedule_s (configuration): must be a non-empty list of waits within 0..2592000 s (30 days)\n    fix: e.g. [0, 5, 30, 300, 1800, 7200]\n  webhook[0].timeout_s (configuration): timeouts must be greater than 0 and at most 3600 s\n    fix: use timeout_s = 5, connect_timeout_s = 3\n  signal.resample_hz (configuration): must be greater than 0 and at most 240, found 10000000\n    fix: use 30 (a camera's frame rate)\n  delivery.probe_max_s (configuration): must be at most 86400 s, found 1e20\n    fix: use 300",
        },
        Case {
            name: "a sync timeout too large to be a duration",
            files: vec![],
            args: vec!["sync", "--timeout", "1e20"],
            env: vec![],
            code: 2,
            stderr: "error: --timeout 1e20 must be a number of seconds within 0..86400",
        },
        Case {
            name: "a send-test rate of one event in 1e30 s",
            files: vec![],
            args: vec!["send-test", "--rate", "1e-30"],
            env: vec![],
            code: 2,
            stderr: "error: --rate 1e-30 must be 0 (as fast as possible) or events per second within 0.001..100000",
        },
        Case {
            name: "an RGB trace whose time jumps by 1e18 ms",
            files: vec![("t.csv", b"time,R,G,B\n0,1,2,3\n1e18,1,2,3\n".to_vec())],
            args: vec!["analyze", "--rgb-csv", "t.csv"],
            env: vec![],
            code: 2,
            stderr: "error: t.csv: line 3: the trace is longer than 3600 s; analyse it in parts",
        },
        Case {
            name: "frames of a different size mid-stream",
            files: vec![],
            args: vec!["scan", "--input", "frames:mixed", "--json"],
            env: vec![],
            code: 2,
            stderr: "error: mixed/0005.png: frame 5: is 32x24, but the first frame is 64x48",
        },
        Case {
            name: "a directory with non-image files",
            files: vec![("notimg/readme.txt", b"hello".to_vec()), ("notimg/0001.png", b"not a png".to_vec())],
            args: vec!["scan", "--input", "frames:notimg", "--json"],
            env: vec![],
            code: 2,
            stderr: "error: invalid --input \"frames:notimg\": notimg/readme.txt is not a .png/.jpg/.jpeg frame; the directory must hold only frames",
        },
        Case {
            name: "a frame that is not an image",
            files: vec![("broken/0001.png", b"not a png".to_vec())],
            args: vec!["scan", "--input", "frames:broken", "--json"],
            env: vec![],
            code: 2,
            stderr: "error: broken/0001.png: frame 0: cannot decode: Format error decoding Png: Invalid PNG signature.",
        },
        Case {
            name: "a portrait that does not exist",
            files: vec![],
            args: vec!["scan", "--input", "synthetic:photo=missing.jpg,box=1:1:40:40", "--json"],
            env: vec![],
            code: 2,
            stderr: "error: cannot open input missing.jpg: No such file or directory (os error 2)",
        },
        Case {
            name: "a portrait that is not an image",
            files: vec![("face.jpg", b"not a jpeg".to_vec())],
            args: vec!["scan", "--input", "synthetic:photo=face.jpg,box=1:1:40:40", "--json"],
            env: vec![],
            code: 2,
            stderr: "error: invalid --input \"synthetic:photo=face.jpg,box=1:1:40:40\": face.jpg: cannot decode: Format error decoding Jpeg: Error parsing image. Illegal start bytes:6E6F",
        },
        Case {
            name: "a portrait without its face box",
            files: vec![],
            args: vec!["scan", "--input", "synthetic:photo=face.jpg", "--json"],
            env: vec![],
            code: 2,
            stderr: "error: invalid --input \"synthetic:photo=face.jpg\": photo=face.jpg needs the face box in the photo: box=X:Y:W:H (pixels)",
        },
        Case {
            name: "a face box outside its portrait",
            files: vec![],
            args: vec!["scan", "--input", "synthetic:photo=small.png,box=50:10:40:40", "--json"],
            env: vec![],
            code: 2,
            stderr: "error: invalid --input \"synthetic:photo=small.png,box=50:10:40:40\": face box 50:10:40:40 is not inside the 64x48 photo",
        },
        Case {
            name: "a face box that nothing uses",
            files: vec![],
            args: vec!["scan", "--input", "synthetic:photo=013,box=1:1:40:40", "--json"],
            env: vec![],
            code: 2,
            stderr: "error: invalid --input \"synthetic:photo=013,box=1:1:40:40\": box= is for photos given by path; the built-in photo 013 has its own face box",
        },
        Case {
            name: "an unknown built-in portrait",
            files: vec![],
            args: vec!["scan", "--input", "synthetic:photo=astronot", "--json"],
            env: vec![],
            code: 2,
            stderr: "error: invalid --input \"synthetic:photo=astronot\": unknown photo \"astronot\"; built-in: astronaut, 001, 013, 016, 021, 032, or a path to a JPEG/PNG with box=X:Y:W:H",
        },
        Case {
            name: "an RGB trace without R, G, B columns",
            files: vec![("t.csv", b"a,b\n1,2\n".to_vec())],
            args: vec!["analyze", "--rgb-csv", "t.csv"],
            env: vec![],
            code: 2,
            stderr: "error: t.csv: the header \"a,b\" lacks an R, G or B column (names are case-insensitive)",
        },
        Case {
            name: "a malformed signature header",
            files: vec![("body.json", b"{}".to_vec())],
            args: vec!["verify", "--secret", GOOD_SECRET, "-H", "webhook-id: x", "-H", "webhook-timestamp: NOW", "-H", "webhook-signature: v2", "--body", "body.json"],
            env: vec![],
            code: 3,
            stderr: "",
        },
    ]
}

#[test]
fn every_bad_input_gets_its_exact_message_and_exit_code_and_leaves_nothing_behind() {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .to_string();
    for case in cases() {
        let dir = tempfile::tempdir().unwrap();
        for (name, bytes) in &case.files {
            let path = dir.path().join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, bytes).unwrap();
        }
        if case.name.contains("outside its portrait") {
            png(&dir.path().join("small.png"), 64, 48);
        }
        if case.name.contains("mid-stream") {
            std::fs::create_dir_all(dir.path().join("mixed")).unwrap();
            for i in 0..10 {
                let (w, h) = if i == 5 { (32, 24) } else { (64, 48) };
                png(&dir.path().join(format!("mixed/{i:04}.png")), w, h);
            }
        }
        let args: Vec<String> = case
            .args
            .iter()
            .map(|a| {
                if a.contains("NOW") {
                    a.replace("NOW", &now)
                } else {
                    a.to_string()
                }
            })
            .collect();
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_rppg-agent"));
        cmd.args(&args)
            .current_dir(dir.path())
            .env_remove("RPPG_CONFIG")
            .env("XDG_DATA_HOME", dir.path().join("xdg"));
        for (k, v) in &case.env {
            cmd.env(k, v);
        }
        let out = run_command(cmd, None, MINUTE);
        let (stderr, stdout) = (&out.stderr, &out.stdout);
        let name = case.name;
        assert_eq!(out.code, case.code, "{name}: {stderr}");
        assert_eq!(stderr.trim_end(), case.stderr, "{name}");
        if case.code == 3 {
            // verify answers on stdout: invalid, and why.
            assert_eq!(
                stdout.trim(),
                "invalid: malformed header webhook-signature: \"v2\" is not v1,<base64>",
                "{name}"
            );
        } else {
            assert!(stdout.is_empty(), "{name}: nothing on stdout: {stdout}");
        }
        // No outbox, no partial state: the run was refused before it began.
        let left: Vec<String> = walk(dir.path())
            .into_iter()
            .filter(|p| {
                !case.files.iter().any(|(f, _)| p == f)
                    && !p.starts_with("mixed/")
                    && p != "small.png"
            })
            .collect();
        assert!(left.is_empty(), "{name}: left behind {left:?}");
    }
}

/// Files under `dir`, relative, as strings.
fn walk(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out
}
