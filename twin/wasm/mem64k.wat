;; A task that needs one 64 KiB page of linear memory (declared fixed: (memory 1 1)). It writes and
;; reads back every 4-byte word, ROUNDS times over (so an instance holds its memory for a while on the
;; simulated ESP32-S3, about 0.8 s), and returns the number of words that read back correctly in the
;; last round (16384). Exports `run` (the scenario's built-in name) and `main` (what firmware calls).
(module
  (memory 1 1)
  (func $round (result i32)
    (local $i i32) (local $ok i32)
    (block $wrote
      (loop $write
        (br_if $wrote (i32.ge_u (local.get $i) (i32.const 65536)))
        (i32.store (local.get $i) (local.get $i))
        (local.set $i (i32.add (local.get $i) (i32.const 4)))
        (br $write)))
    (local.set $i (i32.const 0))
    (block $read
      (loop $check
        (br_if $read (i32.ge_u (local.get $i) (i32.const 65536)))
        (if (i32.eq (i32.load (local.get $i)) (local.get $i))
          (then (local.set $ok (i32.add (local.get $ok) (i32.const 1)))))
        (local.set $i (i32.add (local.get $i) (i32.const 4)))
        (br $check)))
    (local.get $ok))
  (func $run (export "run") (result i32)
    (local $r i32) (local $ok i32)
    (block $done
      (loop $again
        (br_if $done (i32.ge_u (local.get $r) (i32.const 40)))
        (local.set $ok (call $round))
        (local.set $r (i32.add (local.get $r) (i32.const 1)))
        (br $again)))
    (local.get $ok))
  (func (export "main") (result i32)
    (call $run)))
