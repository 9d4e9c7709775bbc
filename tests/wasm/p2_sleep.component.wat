;; A wasi:cli/run command component that sleeps 2 s the WASI p2 way (monotonic-clock
;; subscribe-duration, then pollable.block) and returns ok. wasmtime blocks in that host call and no
;; stop reaches it: the run reports the stop (or the wall-time limit) when it returns.
(component $C
  (import "wasi:io/poll@0.2.0" (instance $poll
    (export "pollable" (type (sub resource)))
    (export "[method]pollable.block" (func (param "self" (borrow 0))))))
  (alias export $poll "pollable" (type $pollable))
  (import "wasi:clocks/monotonic-clock@0.2.0" (instance $clock
    (alias outer $C $pollable (type $p))
    (export "pollable" (type (eq $p)))
    (export "subscribe-duration" (func (param "when" u64) (result (own 1))))))
  (core func $block (canon lower (func $poll "[method]pollable.block")))
  (core func $sub (canon lower (func $clock "subscribe-duration")))
  (core module $m
    (import "h" "block" (func $block (param i32)))
    (import "h" "sub" (func $sub (param i64) (result i32)))
    (func (export "run") (result i32)
      (call $block (call $sub (i64.const 2000000000)))
      (i32.const 0)))
  (core instance $h (export "block" (func $block)) (export "sub" (func $sub)))
  (core instance $i (instantiate $m (with "h" (instance $h))))
  (func $run (result (result)) (canon lift (core func $i "run")))
  (instance $r (export "run" (func $run)))
  (export "wasi:cli/run@0.2.0" (instance $r)))
