;; Sample task for `propeller demo`: add(a, b) and the embedded profile's entry point main(a, b).
(module
  (func $add (export "add") (param i32 i32) (result i32)
    local.get 0
    local.get 1
    i32.add)
  (func (export "main") (param i32 i32) (result i32)
    local.get 0
    local.get 1
    call $add))
