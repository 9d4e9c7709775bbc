;; Iterative Fibonacci as a benchmark workload (like upstream's "500 x 30-step" fib, reference §10):
;; fib(n) computes fib(n) mod 2^32 iteratively, ROUNDS times over, so one task costs millions of Wasm
;; operations. The twin turns the real fuel consumed into the ESP32-S3's simulated run time; one round
;; alone would finish in microseconds and no fault could ever catch a task mid-run.
(module
  (global $rounds i32 (i32.const 100000))
  (func $once (param $n i32) (result i32)
    (local $a i32) (local $b i32) (local $t i32) (local $i i32)
    (local.set $b (i32.const 1))
    (block $done
      (loop $step
        (br_if $done (i32.ge_s (local.get $i) (local.get $n)))
        (local.set $t (i32.add (local.get $a) (local.get $b)))
        (local.set $a (local.get $b))
        (local.set $b (local.get $t))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $step)))
    (local.get $a))
  (func $fib (export "fib") (param $n i32) (result i32)
    (local $r i32) (local $out i32)
    (block $done
      (loop $round
        (br_if $done (i32.ge_s (local.get $r) (global.get $rounds)))
        (local.set $out (call $once (local.get $n)))
        (local.set $r (i32.add (local.get $r) (i32.const 1)))
        (br $round)))
    (local.get $out))
  (func (export "main") (param i32) (result i32)
    (call $fib (local.get 0))))
