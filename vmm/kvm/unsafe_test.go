package kvm

import (
	"go/ast"
	"go/parser"
	"go/token"
	"path/filepath"
	"strings"
	"testing"
)

// gokvmAllowed are the gokvm functions this package may call: they pass no
// memory to the kernel (or only build ioctl numbers). gokvm's other calls
// hand the kernel an address as a uintptr through an ordinary function,
// which does not keep a stack object in place.
var gokvmAllowed = map[string]bool{
	"CreateVM": true, "CreateVCPU": true, "CreateIRQChip": true, "SetTSSAddr": true,
	"SetIdentityMapAddr": true, "GetVCPUMMmapSize": true,
	"IIO": true, "IIOR": true, "IIOW": true, "IIOWR": true,
}

// TestUnsafePointerUse is the regression test for addresses passed as
// uintptr: in this package, uintptr(unsafe.Pointer(...)) may appear only
// as a direct argument of unix.Syscall, and gokvm's pointer-passing calls
// are not used at all.
func TestUnsafePointerUse(t *testing.T) {
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	checked := 0
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, name, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		checked++
		// Conversions that are direct arguments of unix.Syscall are fine.
		allowed := map[ast.Expr]bool{}
		ast.Inspect(f, func(n ast.Node) bool {
			call, ok := n.(*ast.CallExpr)
			if !ok {
				return true
			}
			if sel, ok := call.Fun.(*ast.SelectorExpr); ok {
				pkg, _ := sel.X.(*ast.Ident)
				if pkg != nil && pkg.Name == "unix" && strings.HasPrefix(sel.Sel.Name, "Syscall") {
					for _, a := range call.Args {
						allowed[a] = true
					}
				}
				if pkg != nil && pkg.Name == "gokvm" && !gokvmAllowed[sel.Sel.Name] {
					t.Errorf("%s: call to gokvm.%s, which passes memory to the kernel as a uintptr", fset.Position(call.Pos()), sel.Sel.Name)
				}
			}
			if isUintptrOfPointer(call) && !allowed[call] && !hostAddrFunc(f, call) {
				t.Errorf("%s: uintptr(unsafe.Pointer(...)) outside a unix.Syscall argument list", fset.Position(call.Pos()))
			}
			return true
		})
	}
	if checked == 0 {
		t.Fatal("no source files checked")
	}
}

func isUintptrOfPointer(call *ast.CallExpr) bool {
	id, ok := call.Fun.(*ast.Ident)
	if !ok || id.Name != "uintptr" || len(call.Args) != 1 {
		return false
	}
	inner, ok := call.Args[0].(*ast.CallExpr)
	if !ok {
		return false
	}
	sel, ok := inner.Fun.(*ast.SelectorExpr)
	return ok && sel.Sel.Name == "Pointer"
}

// hostAddrFunc allows the one deliberate address computation: HostAddr,
// whose result names an mmap, not a Go object.
func hostAddrFunc(f *ast.File, call *ast.CallExpr) bool {
	for _, d := range f.Decls {
		fn, ok := d.(*ast.FuncDecl)
		if ok && fn.Name.Name == "HostAddr" && fn.Pos() <= call.Pos() && call.End() <= fn.End() {
			return true
		}
	}
	return false
}
