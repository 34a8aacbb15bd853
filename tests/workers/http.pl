#!/usr/bin/perl
# A worker for the tests, written as users of the Perl original write theirs: it finds
# its sockets with Server::Starter's own server_ports() and answers HTTP/1.0 with
#   hello from pid PID generation N
# on every stream socket. On TERM (or USR1, with exit status 42) it finishes the
# connection in hand and exits.
#
# FAIL_GENERATIONS=1,3,4  exit 3 at once in those generations (a failing start).
# WORKER_LOG=FILE         append "GEN PID CWD SIG..." facts about the process there.
#
# With NOTIFY_SOCKET (start_server --ready=notify), sd_notify's protocol:
# READY_DELAY=SECS        load for that long, then send READY=1 (default: at once)
# NOT_READY_GENERATIONS=2 never send READY=1 in those generations
# EXTEND_USEC=N           send EXTEND_TIMEOUT_USEC=N first
# READY_FROM=grandchild   send READY=1 from a grandchild that exits at once
# WATCHDOG_USEC=N         send WATCHDOG=1 every N/2 us (set by --watchdog) ...
# HUNG_GENERATIONS=2      ... except in those generations
# TRIGGER_GENERATIONS=all send WATCHDOG=trigger right after READY=1 (all, or a list)
#
# SERVE_FROM=setsid       serve from a child that calls setsid(2), the worker itself
#                         only waiting for TERM, then exiting without stopping it
# SERVE_FROM=double-fork  the same from a grandchild, whose parent exits at once
# STUBBORN_CHILD=1        that child (or grandchild) ignores TERM
use strict;
use warnings;
use IO::Select;
use IO::Socket::INET;
use Socket qw(AF_UNIX SOCK_DGRAM pack_sockaddr_un);
use Time::HiRes ();
use Server::Starter qw(server_ports);

my $gen = $ENV{SERVER_STARTER_GENERATION};
exit 3 if grep { $_ eq $gen } split /,/, ($ENV{FAIL_GENERATIONS} || '');

my $stop = '';
$SIG{TERM} = sub { $stop = 'TERM' };
$SIG{USR1} = sub { $stop = 'USR1' };

if (my $log = $ENV{WORKER_LOG}) {
    use Cwd qw(getcwd);
    open my $status, '<', '/proc/self/status' or die "status: $!";
    my %st = map { /^(\w+):\s*(\S*)/ ? ($1, $2) : () } <$status>;
    close $status;
    opendir my $fds, '/proc/self/fd' or die "fd: $!";
    # Each descriptor with what it is, except the one reading this directory.
    my @fds = map { "$_>" . (readlink("/proc/self/fd/$_") // '?') }
        grep { /^\d+$/ && $_ != fileno($fds) } readdir $fds;
    open my $fh, '>>', $log or die "$log: $!";
    print $fh "generation=$gen pid=$$ cwd=", getcwd(), " sigblk=$st{SigBlk}",
        " port=$ENV{SERVER_STARTER_PORT} fds=", join(' ', @fds), "\n";
    close $fh;
}

my @socks;
for my $fd (values %{ server_ports() }) {
    my $sock = IO::Socket::INET->new;
    $sock->fdopen($fd, 'r') or die "fdopen($fd): $!";
    push @socks, $sock if $sock->sockopt(Socket::SO_TYPE()) == Socket::SOCK_STREAM();
}
sub in_list { my ($var) = @_; grep { $_ eq $gen } split /,/, ($ENV{$var} || '') }

sub notify {
    my ($state) = @_;
    my $addr = $ENV{NOTIFY_SOCKET} or return;
    $addr =~ s/^@/\0/;
    socket(my $s, AF_UNIX, SOCK_DGRAM, 0) or die "socket: $!";
    send($s, $state, 0, pack_sockaddr_un($addr)) or warn "notify $state: $!\n";
}

notify("EXTEND_TIMEOUT_USEC=$ENV{EXTEND_USEC}") if $ENV{EXTEND_USEC};
Time::HiRes::sleep($ENV{READY_DELAY}) if $ENV{READY_DELAY} && !$stop;
if (!in_list('NOT_READY_GENERATIONS')) {
    if (($ENV{READY_FROM} || '') eq 'grandchild') {
        my $child = fork // die "fork: $!";
        if (!$child) {
            my $grandchild = fork // die "fork: $!";
            exit 0 if $grandchild;
            notify("READY=1\nSTATUS=ready (from pid $$)");
            exit 0;
        }
        waitpid $child, 0;
    } else {
        notify("READY=1\nSTATUS=serving generation $gen");
    }
    notify("WATCHDOG=trigger")
        if in_list('TRIGGER_GENERATIONS') || ($ENV{TRIGGER_GENERATIONS} || '') eq 'all';
}
my $watchdog = $ENV{WATCHDOG_USEC} && !in_list('HUNG_GENERATIONS') ? $ENV{WATCHDOG_USEC} / 2e6 : undef;
notify("WATCHDOG=1") if $watchdog;

if (my $from = $ENV{SERVE_FROM}) {
    my $child = fork // die "fork: $!";
    if ($child) {
        Time::HiRes::sleep(0.2) until $stop;
        exit 0;
    }
    require POSIX;
    POSIX::setsid() or die "setsid: $!";
    if ($from eq 'double-fork') {
        my $grandchild = fork // die "fork: $!";
        POSIX::_exit(0) if $grandchild;
    }
    $SIG{TERM} = 'IGNORE' if $ENV{STUBBORN_CHILD};
}

my $select = IO::Select->new(@socks);
# Perl runs a signal's handler between ops: a TERM that lands after the loop's test
# but before select(2) would leave select waiting forever. A bounded wait sees it.
my $wait = $watchdog // 0.5;
while (!$stop) {
    my @ready = $select->can_read($wait);
    notify("WATCHDOG=1") if $watchdog;
    for my $sock (@ready) {
        $sock->blocking(0);
        my $conn = $sock->accept or next;
        $conn->blocking(1);
        my $request = '';
        while ($request !~ /\r?\n\r?\n/) {
            my $n = sysread $conn, $request, 4096, length $request;
            last unless $n;
        }
        my $body = "hello from pid $$ generation $gen\n";
        print $conn "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: ",
            length($body), "\r\nConnection: close\r\n\r\n$body";
        close $conn;
    }
}
exit($stop eq 'USR1' ? 42 : 0);
