module example.com/server_starter/go-worker

go 1.19
