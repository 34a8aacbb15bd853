// go-worker: a minimal start_server worker in Go, finding its listeners through
// libserver_starter (cgo, located with pkg-config like any installed C library).
//
// Stream listeners (TCP, unix) serve HTTP: "hello from pid P generation G".
// Datagram listeners (UDP) echo each datagram back to its sender.
//
// On SIGTERM (start_server's "you are the old generation now") it stops
// accepting, lets in-flight requests finish (http.Server.Shutdown closes idle
// keep-alive connections), and exits 0.
//
// When NOTIFY_SOCKET is set it tells the supervisor READY=1 once it serves,
// STOPPING=1 when it begins to drain, and WATCHDOG=1 every WATCHDOG_USEC / 2
// when that is set (sd_notify messages, through server_starter_notify).
package main

// #cgo pkg-config: server_starter
// #include <stdlib.h>
// #include <server_starter.h>
import "C"

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"syscall"
	"time"
	"unsafe"
)

// listeners returns what start_server (or systemd) handed us, as Go values.
func listeners() ([]C.server_starter_listener, error) {
	buf := make([]C.server_starter_listener, 64)
	for {
		n := int(C.server_starter_listeners(&buf[0], C.size_t(len(buf))))
		if n < 0 {
			return nil, fmt.Errorf("no inherited listeners: %s (run me under start_server)",
				C.GoString(C.server_starter_strerror(C.int(n))))
		}
		if n <= len(buf) {
			return buf[:n], nil
		}
		buf = make([]C.server_starter_listener, n) // more than we had room for: ask again
	}
}

// notify sends state to the supervisor (nothing when NOTIFY_SOCKET is unset).
// A failure is logged: the worker serves all the same.
func notify(state string) {
	cs := C.CString(state)
	defer C.free(unsafe.Pointer(cs))
	if rc := C.server_starter_notify(cs); rc < 0 { // -errno, not a SERVER_STARTER_E* code
		log.Printf("telling the supervisor %q: %v", state, syscall.Errno(-rc))
	}
}

// watchdog sends WATCHDOG=1 every WATCHDOG_USEC / 2 until stop is closed, when
// the supervisor asks this process for keep-alives; otherwise it returns at once.
func watchdog(stop <-chan struct{}) {
	usec, err := strconv.ParseUint(os.Getenv("WATCHDOG_USEC"), 10, 63)
	if err != nil || usec == 0 {
		return
	}
	if pid := os.Getenv("WATCHDOG_PID"); pid != "" && pid != strconv.Itoa(os.Getpid()) {
		return // meant for another process
	}
	every := time.Duration(usec) * time.Microsecond / 2
	if every < time.Millisecond {
		every = time.Millisecond
	}
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		select {
		case <-tick.C:
			notify("WATCHDOG=1")
		case <-stop:
			return
		}
	}
}

func main() {
	log.SetPrefix("go-worker: ")
	log.SetFlags(0)
	ls, err := listeners()
	if err != nil {
		log.Fatal(err)
	}
	body := fmt.Sprintf("hello from pid %d generation %d\n", os.Getpid(), int64(C.server_starter_generation()))
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		fmt.Fprint(w, body)
	})}

	// Catch SIGTERM before serving, so that an early one is not fatal.
	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM, syscall.SIGINT)

	var wg sync.WaitGroup
	var packetConns []net.PacketConn
	for _, l := range ls {
		name := C.GoString(&l.name[0])
		f := os.NewFile(uintptr(l.fd), name)
		if l.socktype == C.int(syscall.SOCK_DGRAM) {
			pc, err := net.FilePacketConn(f)
			if err != nil {
				log.Fatalf("listener %s (fd %d): %v", name, l.fd, err)
			}
			packetConns = append(packetConns, pc)
			wg.Add(1)
			go func() { defer wg.Done(); echo(pc) }()
		} else {
			ln, err := net.FileListener(f)
			if err != nil {
				log.Fatalf("listener %s (fd %d): %v", name, l.fd, err)
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
					log.Fatalf("serving %s: %v", name, err)
				}
			}()
		}
		f.Close() // net.File* made their own copy of the descriptor
	}
	log.Printf("pid %d generation %d serving %d listener(s)", os.Getpid(), int64(C.server_starter_generation()), len(ls))
	notify("READY=1")
	stopWatchdog := make(chan struct{})
	go watchdog(stopWatchdog)

	sig := <-term
	log.Printf("pid %d got %v, draining", os.Getpid(), sig)
	notify("STOPPING=1")
	close(stopWatchdog)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		log.Printf("shutdown: %v", err)
	}
	for _, pc := range packetConns {
		pc.Close()
	}
	wg.Wait()
	log.Printf("pid %d exiting", os.Getpid())
}

// echo sends every datagram back to where it came from, until pc is closed.
func echo(pc net.PacketConn) {
	buf := make([]byte, 65536)
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			return // closed at shutdown
		}
		pc.WriteTo(buf[:n], from) // UDP may drop, and so may we
	}
}
