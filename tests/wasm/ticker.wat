;; WASI command that never ends: writes "tick\n" to stderr about every 50 ms of monotonic time (a busy
;; wait on clock_time_get, so the runtime's epoch checks keep running). For live logs and stop tests.
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "clock_time_get" (func $clock (param i32 i64 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 100) "tick\n")
  (func $now (result i64)
    (drop (call $clock (i32.const 1) (i64.const 1000) (i32.const 16)))
    (i64.load (i32.const 16)))
  (func (export "_start")
    (local $until i64)
    (loop $forever
      (i32.store (i32.const 0) (i32.const 100))
      (i32.store (i32.const 4) (i32.const 5))
      (drop (call $fd_write (i32.const 2) (i32.const 0) (i32.const 1) (i32.const 8)))
      (local.set $until (i64.add (call $now) (i64.const 50000000)))
      (loop $wait (br_if $wait (i64.lt_u (call $now) (local.get $until))))
      (br $forever))))
