;; Core-module behaviours for the runtime tests: arithmetic, types, traps, hostile loops.
(module
  (memory (export "memory") 1)
  (global $init (mut i32) (i32.const 0))
  (func (export "_initialize") (global.set $init (i32.const 7)))
  (func (export "get_init") (result i32) (global.get $init))
  (func (export "add") (param i32 i32) (result i32) (i32.add (local.get 0) (local.get 1)))
  (func (export "main") (param i32 i32) (result i32) (i32.mul (local.get 0) (local.get 1)))
  (func (export "div") (param i32 i32) (result i32) (i32.div_s (local.get 0) (local.get 1)))
  (func (export "mix") (param i64 f32 f64) (result f64)
    (f64.add (f64.add (f64.convert_i64_s (local.get 0)) (f64.promote_f32 (local.get 1))) (local.get 2)))
  (func (export "half") (param f32) (result f32) (f32.div (local.get 0) (f32.const 2)))
  (func (export "pair") (result i32 i64) (i32.const 4) (i64.const -5))
  (func (export "nothing"))
  (func (export "takes_ref") (param externref) (result i32) (i32.const 0))
  (func (export "spin") (loop $l (br $l)))
  ;; iterative fib(n), repeated `reps` times: a CPU-bound kernel
  (func $fib (export "fib") (param $n i32) (result i32)
    (local $a i32) (local $b i32) (local $t i32)
    (local.set $b (i32.const 1))
    (block $done
      (loop $l
        (br_if $done (i32.eqz (local.get $n)))
        (local.set $t (i32.add (local.get $a) (local.get $b)))
        (local.set $a (local.get $b))
        (local.set $b (local.get $t))
        (local.set $n (i32.sub (local.get $n) (i32.const 1)))
        (br $l)))
    (local.get $a))
  (func (export "fib_reps") (param $n i32) (param $reps i32) (result i32)
    (local $acc i32)
    (block $done
      (loop $l
        (br_if $done (i32.eqz (local.get $reps)))
        (local.set $acc (i32.add (local.get $acc) (call $fib (local.get $n))))
        (local.set $reps (i32.sub (local.get $reps) (i32.const 1)))
        (br $l)))
    (local.get $acc))
  ;; grows memory one page at a time; a refused grow (-1) ends in `unreachable`, like a failed malloc
  (func (export "grow_bomb") (result i32)
    (loop $l
      (if (i32.eq (memory.grow (i32.const 1)) (i32.const -1)) (then unreachable))
      (br $l))
    (i32.const 0))
  ;; grows until refused and then reports how many pages it holds: a well-behaved guest
  (func (export "grow_polite") (result i32)
    (block $done (loop $l
      (br_if $done (i32.eq (memory.grow (i32.const 1)) (i32.const -1)))
      (br $l)))
    (memory.size)))
