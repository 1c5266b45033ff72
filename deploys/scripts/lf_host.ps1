# llamafleet's helper on Windows hosts (Windows PowerShell 5.1 or PowerShell 7), driven over OpenSSH.
# The same verbs and JSON (here base64-encoded) as lf_host.py on POSIX hosts:
#   state SPEC_JSON     the host's whole state as one JSON document (run inline by WindowsHostState)
#   fetch SPEC_JSON     download from the first of its sources that gives the right bytes (cache, peers,
#                       upstream): resumable (HTTP Range), sha256 check, atomic rename, verified stamp
#   install SPEC_JSON   install a llama.cpp release .zip (or source build) into its own folder and,
#                       unless the spec says "switch": false, switch `current` to it
#   switch SPEC_JSON    an upgrade's switch: remember the previous build and the files about to be
#                       rewritten (state\rollback.json), then point `current` at the new build
#   rollback SPEC_JSON  undo the last switch: restore those files and point `current` back
#   wait SPEC_JSON      wait until the services answer (and report the expected build, and complete)
#   private SPEC_JSON   make a folder only the given SIDs may use (the folder a secret is uploaded to)
#   secret SPEC_JSON    put an uploaded secret in place, only the given SIDs may use it; remove the upload
# Errors: one line "llamafleet: ..." on stderr and exit code 2 (bad input) or 3 (verification failed).
param([Parameter(Mandatory = $true)][string]$Verb, [Parameter(Mandatory = $true)][string]$SpecJson)

$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'
$Binaries = @('llama-server', 'ggml-rpc-server')

function Fail([string]$Message, [int]$Code = 2) {
    [Console]::Error.WriteLine("llamafleet: $($Message -replace '\s*\r?\n\s*', ' ')")  # always one line
    exit $Code
}

# Archive members stay inside the destination, by the rules of lf_host.py's member_path: no absolute
# or drive-rooted name, no '..' component, and (Windows release zips hold none) no link, hard link or
# device. Checked for every member before anything is unpacked.
$AbsoluteName = '^([\\/]|[A-Za-z]:)'
$NamePart = '[\\/]'

function Assert-Member([string]$Archive, [string]$Name, [string]$Kind) {
    $what = "$(Split-Path -Leaf $Archive): member '$Name'"
    if ($Kind -ne 'file' -and $Kind -ne 'folder') { Fail "$what is a $Kind; only files and folders are unpacked here" }
    if ($Name -match $AbsoluteName) { Fail "$what has an absolute name; refusing to unpack it" }
    if (@($Name -split $NamePart) -contains '..') { Fail "$what leaves the destination folder (a '..' component); refusing to unpack it" }
}

function Assert-ZipMembers([string]$Archive) {
    Add-Type -AssemblyName System.IO.Compression.FileSystem
    try { $zip = [IO.Compression.ZipFile]::OpenRead($Archive) } catch {
        Fail "$Archive is not a readable zip archive ($($_.Exception.Message)); delete it and run the deploy again" 3
    }
    try {
        foreach ($entry in $zip.Entries) {
            $type = ($entry.ExternalAttributes -shr 16) -band 0xF000  # Unix mode bits, when a Unix zip wrote them
            $kind = if ($type -eq 0xA000) { 'link' } elseif ($type -in 0, 0x8000, 0x4000) { 'file' } else { 'device or fifo' }
            Assert-Member $Archive $entry.FullName $kind
        }
    } finally { $zip.Dispose() }
}

function Assert-TarMembers([string]$Archive) {
    # bsdtar (tar.exe): one verbose line per member, its type in the first character.
    $lines = @(tar -tvzf $Archive 2>&1 | ForEach-Object { "$_" })
    $names = @(tar -tzf $Archive 2>$null)
    if ($LASTEXITCODE -ne 0 -or $lines.Count -ne $names.Count) {
        Fail "$Archive is not a readable tar archive ($($lines | Select-Object -Last 1)); delete it and run the deploy again" 3
    }
    for ($i = 0; $i -lt $names.Count; $i++) {
        $kind = switch -CaseSensitive ($lines[$i].Substring(0, 1)) { '-' { 'file' } 'd' { 'folder' } 'l' { 'link' } 'h' { 'hard link' } default { 'device or fifo' } }
        Assert-Member $Archive $names[$i] $kind
    }
}

function Get-Sha256([string]$Path) { (Get-FileHash -Algorithm SHA256 -LiteralPath $Path).Hash.ToLower() }

function Get-StampPath([string]$Path) {
    Join-Path (Split-Path -Parent $Path) ('.' + (Split-Path -Leaf $Path) + '.verified')
}

function Read-Json([string]$Path) {
    if (-not (Test-Path -LiteralPath $Path)) { return $null }
    try { Get-Content -Raw -LiteralPath $Path | ConvertFrom-Json } catch { $null }
}

function Test-Verified([string]$Path, [string]$Sha256) {
    if (-not (Test-Path -LiteralPath $Path)) { return $false }
    $item = Get-Item -LiteralPath $Path
    $stamp = Read-Json (Get-StampPath $Path)
    # The stamp's size and write time still match: no re-hash of a large file.
    return ($null -ne $stamp -and $stamp.sha256 -eq $Sha256 -and $stamp.size -eq $item.Length -and
            $stamp.mtime_ticks -eq $item.LastWriteTimeUtc.Ticks)
}

function Write-Stamp([string]$Path, [string]$Sha256) {
    $item = Get-Item -LiteralPath $Path
    $body = @{ size = $item.Length; mtime_ticks = $item.LastWriteTimeUtc.Ticks; sha256 = $Sha256 } | ConvertTo-Json -Compress
    Set-Content -LiteralPath (Get-StampPath $Path) -Value $body -Encoding UTF8
}

function Get-RemoteSize([string]$Url) {
    $request = [Net.HttpWebRequest]::Create($Url); $request.Method = 'HEAD'
    $response = $request.GetResponse(); try { $response.ContentLength } finally { $response.Close() }
}

function Write-Note([string]$Message) { [Console]::Error.WriteLine("llamafleet: $Message") }

function Receive-Resumable([string]$Url, [string]$Partial, [long]$Size) {
    # $null once $Partial holds $Size bytes from $Url, else why not. A source that refuses the connection
    # or answers an HTTP error is not retried (the next source is); a cut download resumes (HTTP Range).
    $last = 'no answer'
    for ($attempt = 0; $attempt -lt 5; $attempt++) {
        $have = if (Test-Path -LiteralPath $Partial) { (Get-Item -LiteralPath $Partial).Length } else { 0 }
        if ($have -gt $Size) { Remove-Item -LiteralPath $Partial; $have = 0 }
        if ($have -eq $Size) { return $null }
        try {
            $request = [Net.HttpWebRequest]::Create($Url)
            if ($have -gt 0) { $request.AddRange([long]$have) }
            $response = $request.GetResponse()
            # 206 appends; a server that ignores Range answers 200 with the whole file.
            $mode = if ([int]$response.StatusCode -eq 206) { [IO.FileMode]::Append } else { [IO.FileMode]::Create }
            $out = [IO.File]::Open($Partial, $mode)
            try { $response.GetResponseStream().CopyTo($out, 1MB) } finally { $out.Close(); $response.Close() }
            Write-Note "$(Split-Path -Leaf $Partial) $((Get-Item -LiteralPath $Partial).Length) / $Size bytes from $(([Uri]$Url).Authority)"
        } catch [Net.WebException] {
            $last = $_.Exception.Message
            if ($null -ne $_.Exception.Response -or $_.Exception.Status -eq [Net.WebExceptionStatus]::ConnectFailure) { break }
            Start-Sleep -Seconds 1
        }
    }
    $have = if (Test-Path -LiteralPath $Partial) { (Get-Item -LiteralPath $Partial).Length } else { 0 }
    if ($have -eq $Size) { return $null }
    "download of $Url stopped at $have of $Size bytes ($last); run the deploy again to resume"
}

function Invoke-Fetch($Spec) {
    # $Spec.sources (default: $Spec.url) are tried in order: the cluster's file cache, the peers that hold
    # the file, upstream. What a source sends lands in .<name>.partial and is hashed before it replaces
    # anything: a source that cannot be reached, answers an error or sends bytes with another sha256 is
    # skipped with one line and the next one tried; bytes kept from an earlier source or run that fail
    # the hash get that source one more try from the first byte. Only when every source failed does the
    # fetch fail, naming each reason (the rules of lf_host.py's fetch).
    $dest = $Spec.dest; $dir = Split-Path -Parent $dest; $name = Split-Path -Leaf $dest
    New-Item -ItemType Directory -Force -Path $dir | Out-Null
    if (Test-Verified $dest $Spec.sha256) { return 'verified' }
    $sources = @(@($Spec.sources) | Where-Object { $_ })
    if ($sources.Count -eq 0) { $sources = @($Spec.url) }
    $size = if ($Spec.size) { [long]$Spec.size } else { $null }
    if ((Test-Path -LiteralPath $dest) -and ($null -eq $size -or (Get-Item -LiteralPath $dest).Length -eq $size) -and
        (Get-Sha256 $dest) -eq $Spec.sha256) {
        Write-Stamp $dest $Spec.sha256; return 'verified (stamped)'
    }
    $partial = Join-Path $dir ('.' + $name + '.partial')
    if ($null -ne $size) {
        $have = if (Test-Path -LiteralPath $partial) { (Get-Item -LiteralPath $partial).Length } else { 0 }
        $free = (Get-PSDrive -Name (Split-Path -Qualifier $dest).TrimEnd(':')).Free
        if ($free -lt ($size - $have)) { Fail "not enough free disk in $dir for ${name}: need $($size - $have) bytes, $free free" }
    }
    $kept = if (Test-Path -LiteralPath $dest) { 'the existing file was left in place' } else { 'nothing was installed' }
    $failures = @(); $mismatch = $false
    for ($index = 0; $index -lt $sources.Count; $index++) {
        $url = $sources[$index]; $more = $index + 1 -lt $sources.Count
        foreach ($fromZero in @($false, $true)) {
            $resumed = (Test-Path -LiteralPath $partial) -and (Get-Item -LiteralPath $partial).Length -gt 0
            $why = try {
                $want = if ($null -ne $size) { $size } else { Get-RemoteSize $url }
                Receive-Resumable $url $partial $want
            } catch { "${url}: $($_.Exception.Message)" }
            if ($why) {
                $failures += $why
                if ($more) { Write-Note "${name}: skipping ${url}: $why" }
                break
            }
            $got = Get-Sha256 $partial
            if ($got -eq $Spec.sha256) {
                Move-Item -Force -LiteralPath $partial -Destination $dest
                Write-Stamp $dest $Spec.sha256
                if ($sources.Count -gt 1) { return "downloaded $name from $url" }
                return 'downloaded'
            }
            Remove-Item -LiteralPath $partial
            if ($resumed -and -not $fromZero) { continue }
            $mismatch = $true
            $failures += "sha256 mismatch for ${url}: expected $($Spec.sha256), got $got"
            if ($more) { Write-Note "${name}: skipping ${url}: it sent bytes with sha256 $got, not $($Spec.sha256)" }
            break
        }
    }
    $code = if ($mismatch) { 3 } else { 2 }
    if ($sources.Count -eq 1) { Fail "$($failures[0])$(if ($mismatch) { "; $kept" })" $code }
    Fail "no source gave $name with sha256 $($Spec.sha256) ($($failures -join '; ')); $kept" $code
}

function Get-VersionLine([string]$BinDir) {
    $server = Join-Path $BinDir 'llama-server.exe'
    if (-not (Test-Path -LiteralPath $server)) { return $null }
    $lines = & $server --version 2>&1 | ForEach-Object { "$_" }
    $line = $lines | Where-Object { $_ -like 'version:*' } | Select-Object -First 1
    if ($line) { $line.Trim() } else { 'error: no version line' }
}

function Get-BinaryHashes([string]$BinDir) {
    $hashes = [ordered]@{}
    foreach ($name in $Binaries) {
        $path = Join-Path $BinDir "$name.exe"
        if (Test-Path -LiteralPath $path) { $hashes[$name] = Get-Sha256 $path }
    }
    $hashes
}

function Invoke-Install($Spec) {
    $builds = Join-Path $Spec.install_dir 'builds'
    $target = Join-Path $builds $Spec.build_id
    New-Item -ItemType Directory -Force -Path $builds | Out-Null
    $record = Read-Json (Join-Path $target 'install.json')
    $wanted = @($Spec.artifacts | ForEach-Object { $_.sha256 }) -join ','
    if ($Spec.force -or $null -eq $record -or (@($record.artifacts_sha256) -join ',') -ne $wanted) {
        $archives = @()
        foreach ($artifact in $Spec.artifacts) {
            $archives += Join-Path (Join-Path $Spec.install_dir 'downloads') $artifact.file
            Invoke-Fetch @{ url = $artifact.url; sources = $artifact.sources; dest = $archives[-1]; sha256 = $artifact.sha256
                            size = $artifact.size } | Out-Null
        }
        $staging = Join-Path $builds ".$($Spec.build_id).partial"
        if (Test-Path -LiteralPath $staging) { Remove-Item -Recurse -Force -LiteralPath $staging }
        if ($Spec.method -eq 'source') {
            $src = Join-Path $builds ".$($Spec.build_id).src"
            if (Test-Path -LiteralPath $src) { Remove-Item -Recurse -Force -LiteralPath $src }
            Assert-TarMembers $archives[0]
            tar -xzf $archives[0] -C (New-Item -ItemType Directory -Force -Path $src).FullName --strip-components=1
            & cmake -S $src -B "$src-build" @($Spec.cmake_options)
            if ($LASTEXITCODE -ne 0) { Fail 'source build failed: cmake configure' }
            & cmake --build "$src-build" --config Release --target @($Binaries)
            if ($LASTEXITCODE -ne 0) { Fail 'source build failed: cmake --build' }
            Copy-Item -Recurse -LiteralPath "$src-build\bin\Release" -Destination $staging
            Remove-Item -Recurse -Force -LiteralPath $src, "$src-build"
        } else {
            # Windows release zips hold the binaries at the top level (no llama-<tag> folder); the
            # cudart zip of a CUDA build is expanded on top of the llama zip.
            foreach ($archive in $archives) { Assert-ZipMembers $archive }
            foreach ($archive in $archives) { Expand-Archive -LiteralPath $archive -DestinationPath $staging -Force }
        }
        foreach ($name in $Spec.binaries) {
            if (-not (Test-Path -LiteralPath (Join-Path $staging "$name.exe"))) { Fail "$($Spec.artifacts[0].file) has no $name.exe" }
        }
        $line = Get-VersionLine $staging
        $number = if ($line -match 'build (\d+)') { [int]$Matches[1] } elseif ($line -match 'version: (\d+)') { [int]$Matches[1] } else { -1 }
        $pinned = [int]$Spec.build.TrimStart('b')
        if ($number -ne $pinned -and $number -ne 0) { Fail "$($Spec.artifacts[0].file) reports '$line' but the pin is $($Spec.build)" 3 }
        $record = [ordered]@{
            build = $Spec.build; backend = $Spec.backend; method = $Spec.method; artifacts = @($Spec.artifacts | ForEach-Object { $_.file })
            artifacts_sha256 = @($Spec.artifacts | ForEach-Object { $_.sha256 }); version = $line; reported_build = $number
            binaries = Get-BinaryHashes $staging; cmake_options = @($Spec.cmake_options)
            installed_at = [int][double]::Parse((Get-Date -UFormat %s))
        }
        Set-Content -LiteralPath (Join-Path $staging 'install.json') -Value ($record | ConvertTo-Json -Depth 4) -Encoding UTF8
        if (Test-Path -LiteralPath $target) { Remove-Item -Recurse -Force -LiteralPath $target }
        Move-Item -LiteralPath $staging -Destination $target
    }
    # An upgrade installs beside the build in use ("switch": false); the rollout's switch verb moves `current`.
    if ($Spec.'switch' -eq $false) { return "installed $($Spec.build_id) beside $(Get-CurrentBuild $builds)" }
    Set-Current $builds $Spec.build_id
    "installed $($Spec.build_id)"
}

function Get-CurrentBuild([string]$Builds) {
    $current = Join-Path $Builds 'current'
    if (-not (Test-Path -LiteralPath $current)) { return $null }
    Split-Path -Leaf ((Get-Item -LiteralPath $current).Target | Select-Object -First 1)
}

function Set-Current([string]$Builds, [string]$BuildId) {
    # `current` is a directory junction: switching it is the upgrade, switching back the rollback. A
    # junction cannot be renamed over another, so the new one is made first and the old one removed
    # just before the rename: `current` is missing only between those two steps.
    if ((Get-CurrentBuild $Builds) -eq $BuildId) { return }
    $current = Join-Path $Builds 'current'
    $next = Join-Path $Builds 'current.new'
    if (Test-Path -LiteralPath $next) { (Get-Item -LiteralPath $next).Delete() }
    New-Item -ItemType Junction -Path $next -Target (Join-Path $Builds $BuildId) | Out-Null
    if (Test-Path -LiteralPath $current) { (Get-Item -LiteralPath $current).Delete() }
    Rename-Item -LiteralPath $next -NewName 'current'
}

function Write-TextFile([string]$Path, [string]$Text) {
    # UTF-8 without a BOM, written beside and renamed: the bytes the deploy uploaded come back exactly.
    $tmp = "$Path.lf-tmp"
    [IO.File]::WriteAllText($tmp, $Text, (New-Object Text.UTF8Encoding $false))
    Move-Item -Force -LiteralPath $tmp -Destination $Path
}

function Get-RollbackPath([string]$InstallDir) { Join-Path (Join-Path $InstallDir 'state') 'rollback.json' }

function Invoke-Switch($Spec) {
    # Switch `current` to an installed build, first saving what a rollback needs: the build in use and
    # the present content (or absence) of every file the deploy is about to rewrite.
    $builds = Join-Path $Spec.install_dir 'builds'
    $previous = Get-CurrentBuild $builds
    if ($previous -eq $Spec.build_id) { return "$previous is already current" }
    if (-not (Test-Path -LiteralPath (Join-Path (Join-Path $builds $Spec.build_id) 'install.json'))) {
        Fail "$($Spec.build_id) is not installed under $builds"
    }
    $saved = [ordered]@{}
    foreach ($path in @($Spec.files)) {
        if (-not $path) { continue }
        $saved[$path] = if (Test-Path -LiteralPath $path) { [IO.File]::ReadAllText($path) } else { $null }
    }
    $rollback = Get-RollbackPath $Spec.install_dir
    New-Item -ItemType Directory -Force -Path (Split-Path -Parent $rollback) | Out-Null
    $body = [ordered]@{ previous = $previous; build_id = $Spec.build_id; files = $saved
                        at = [int][double]::Parse((Get-Date -UFormat %s)) }
    Write-TextFile $rollback ($body | ConvertTo-Json -Depth 4 -Compress)
    Set-Current $builds $Spec.build_id
    "switched $(if ($previous) { $previous } else { 'nothing' }) -> $($Spec.build_id)"
}

function Invoke-Rollback($Spec) {
    # Undo the last switch: the saved files come back (a file that did not exist is removed) and
    # `current` points at the previous build again.
    $rollback = Get-RollbackPath $Spec.install_dir
    if (-not (Test-Path -LiteralPath $rollback)) { Fail "nothing to roll back: $rollback does not exist" }
    # Read as UTF-8 (Windows PowerShell's Get-Content would read a file without a BOM as ANSI).
    $saved = [IO.File]::ReadAllText($rollback) | ConvertFrom-Json
    foreach ($file in @($saved.files.PSObject.Properties | Sort-Object Name)) {
        if ($null -eq $file.Value) {
            if (Test-Path -LiteralPath $file.Name) { Remove-Item -Force -LiteralPath $file.Name }
        } else {
            New-Item -ItemType Directory -Force -Path (Split-Path -Parent $file.Name) | Out-Null
            Write-TextFile $file.Name $file.Value
        }
    }
    if ($saved.previous) { Set-Current (Join-Path $Spec.install_dir 'builds') $saved.previous }
    Remove-Item -LiteralPath $rollback
    "rolled back $($saved.build_id) -> $(if ($saved.previous) { $saved.previous } else { 'nothing' })"
}

function Invoke-Wait($Spec) {
    $deadline = (Get-Date).AddSeconds([int]$Spec.timeout)
    $pending = @($Spec.http) + @($Spec.tcp) | Where-Object { $_ }
    while ($pending.Count -gt 0 -and (Get-Date) -lt $deadline) {
        $pending = @($pending | Where-Object {
            if ($_ -like 'http*') {
                try { (Invoke-WebRequest -UseBasicParsing -TimeoutSec 5 -Uri $_).StatusCode -ne 200 } catch { $true }
            } else {
                # A listening socket, not a connect: ggml-rpc-server serves one client at a time.
                $hostName, $port = $_ -split ':(?=\d+$)'
                -not (Get-NetTCPConnection -State Listen -LocalAddress $hostName.Trim('[]') -LocalPort ([int]$port) -ErrorAction SilentlyContinue)
            }
        })
        if ($pending.Count -gt 0) { Start-Sleep -Seconds 1 }
    }
    if ($pending.Count -gt 0) { Fail "not answering after $($Spec.timeout)s: $($pending -join ', ') (see the logs under $($Spec.logs))" }
    # Then, when the spec asks: each llama-server's /props reports the expected build ("b8942-f535774")
    # and it answers one short completion (the model loaded; for a target, its draft device answers).
    # The servers' API key (/health is public, /props and /completion are not), read from its file.
    $headers = @{}
    if ($Spec.key_file) {
        $key = try { "$([IO.File]::ReadAllLines($Spec.key_file) | Select-Object -First 1)".Trim() } catch {
            Fail "cannot read the servers' API key file $($Spec.key_file): $($_.Exception.Message)"
        }
        $headers['Authorization'] = "Bearer $key"
    }
    if ($Spec.props) {
        foreach ($entry in @($Spec.props.PSObject.Properties | Sort-Object Name)) {
            $info = try { "$((Invoke-RestMethod -TimeoutSec 5 -Headers $headers -Uri "$($entry.Name)/props").build_info)" } catch { "error: $_" }
            if (-not $info.StartsWith("b$($entry.Value)-")) { Fail "$($entry.Name)/props reports build_info '$info', not build b$($entry.Value)" 3 }
        }
    }
    $body = @{ prompt = 'Hello'; n_predict = 2; temperature = 0; cache_prompt = $false } | ConvertTo-Json -Compress
    foreach ($base in @($Spec.completion)) {
        if (-not $base) { continue }
        $answer = try { Invoke-RestMethod -Method Post -TimeoutSec 120 -Headers $headers -ContentType 'application/json' -Body $body -Uri "$base/completion" } catch { $null }
        if ($null -eq $answer -or $null -eq $answer.content) { Fail "$base/completion did not answer a 2-token completion" 3 }
    }
    'all services answer'
}

# --- secrets: files and folders only SYSTEM, Administrators and the services' account may use ---------
# The deploy names them by SID (the names are translated on non-English Windows). Every check looks at
# the path itself: [IO.File]::GetAttributes does not follow a link, and sees a dangling one too.

function Get-Attributes([string]$Path) {
    try { [IO.File]::GetAttributes($Path) } catch [IO.FileNotFoundException], [IO.DirectoryNotFoundException] { $null }
}

function Test-Reparse($Attributes) { $null -ne $Attributes -and ($Attributes -band [IO.FileAttributes]::ReparsePoint) }

function Assert-NotReparse([string]$Path, [string]$What) {
    if (Test-Reparse (Get-Attributes $Path)) {
        Fail "$What $Path is a reparse point (a symbolic link or junction); refusing to write through it (remove it, the deploy then creates it)"
    }
}

function Set-Private([string]$Path, [string[]]$Sids, [bool]$Folder) {
    # A new access list, not an edit of the present one: inheritance removed and nothing inherited kept,
    # full control for each SID (a folder's rules inherited by what is created in it), no other rule.
    $acl = if ($Folder) { New-Object Security.AccessControl.DirectorySecurity } else { New-Object Security.AccessControl.FileSecurity }
    $acl.SetAccessRuleProtection($true, $false)
    $inherit = if ($Folder) { [Security.AccessControl.InheritanceFlags]'ContainerInherit, ObjectInherit' } else { [Security.AccessControl.InheritanceFlags]::None }
    foreach ($sid in $Sids) {
        $acl.AddAccessRule((New-Object Security.AccessControl.FileSystemAccessRule((New-Object Security.Principal.SecurityIdentifier $sid),
            [Security.AccessControl.FileSystemRights]::FullControl, $inherit, [Security.AccessControl.PropagationFlags]::None,
            [Security.AccessControl.AccessControlType]::Allow)))
    }
    Set-Acl -LiteralPath $Path -AclObject $acl
}

function New-PrivateFolder([string]$Path, [string[]]$Sids) {
    Assert-NotReparse $Path 'folder'
    $attributes = Get-Attributes $Path
    if ($null -ne $attributes -and -not ($attributes -band [IO.FileAttributes]::Directory)) { Fail "$Path is not a folder; refusing to use it" }
    New-Item -ItemType Directory -Force -Path $Path | Out-Null
    Set-Private $Path $Sids $true
}

function Invoke-Private($Spec) {
    New-PrivateFolder $Spec.path @($Spec.sids)
    "only $(@($Spec.sids) -join ', ') may use $($Spec.path)"
}

function Invoke-Secret($Spec) {
    # The secret the deploy uploaded (into a folder made by Invoke-Private) becomes $Spec.path, only the
    # SIDs may use it or its folder; the upload is removed whatever happens. Read from files only,
    # never from the command line.
    $path = $Spec.path; $upload = $Spec.upload; $sids = @($Spec.sids)
    $attributes = Get-Attributes $upload
    try {
        if ($null -eq $attributes) { Fail "cannot read the uploaded secret $upload: it is not there" }
        if ($attributes -band ([IO.FileAttributes]::ReparsePoint -bor [IO.FileAttributes]::Directory)) { Fail "the uploaded secret $upload is not a regular file" }
        $data = [IO.File]::ReadAllBytes($upload)
    } finally { if ($null -ne (Get-Attributes $upload)) { Remove-Item -Force -LiteralPath $upload } }
    if ([Text.Encoding]::UTF8.GetString($data).Trim().Length -eq 0) { Fail "the uploaded secret for $path is empty" }
    New-PrivateFolder (Split-Path -Parent $path) $sids
    Assert-NotReparse $path 'secret file'
    $attributes = Get-Attributes $path
    $result = 'created'
    if ($null -ne $attributes) {
        if ($attributes -band [IO.FileAttributes]::Directory) { Fail "secret file $path is not a regular file; refusing to use it" }
        $result = if ([Convert]::ToBase64String([IO.File]::ReadAllBytes($path)) -eq [Convert]::ToBase64String($data)) { 'kept' } else { 'replaced' }
    }
    if ($result -ne 'kept') {
        # Made empty beside it, its access list set, then filled and renamed over the path (a rename keeps it).
        $tmp = "$path.lf-tmp"
        if ($null -ne (Get-Attributes $tmp)) { Remove-Item -Force -LiteralPath $tmp }
        [IO.File]::WriteAllBytes($tmp, [byte[]]@())
        Set-Private $tmp $sids $false
        [IO.File]::WriteAllBytes($tmp, $data)
        Move-Item -Force -LiteralPath $tmp -Destination $path
    }
    Set-Private $path $sids $false  # a kept file's access list is repaired as well
    "$result $path"
}

function Get-AclState([string]$Path) {
    # The access list as SIDs: whether inheritance is removed, and every rule (the deploy compares them).
    $acl = Get-Acl -LiteralPath $Path
    @{ protected = $acl.AreAccessRulesProtected
       rules = @($acl.GetAccessRules($true, $true, [Security.Principal.SecurityIdentifier]) | ForEach-Object {
           @{ sid = $_.IdentityReference.Value; type = "$($_.AccessControlType)"; rights = "$($_.FileSystemRights)" } }) }
}

function Get-FileState([string]$Path) {
    if (-not (Test-Path -LiteralPath $Path)) { return $null }
    @{ sha256 = Get-Sha256 $Path; owner = (Get-Acl -LiteralPath $Path).Owner }
}

function Get-State($Spec) {
    $builds = Join-Path $Spec.install_dir 'builds'
    $current = Join-Path $builds 'current'
    $install = @{ current = $null; builds = @(); record = $null; version = $null; binaries = @{}; installed = @{} }
    if (Test-Path -LiteralPath $builds) {
        $install.builds = @(Get-ChildItem -Directory -LiteralPath $builds | Where-Object { $_.Name -notin @('current', 'current.new') -and -not $_.Name.StartsWith('.') } | ForEach-Object Name)
    }
    # What each installed folder was installed from: a switch to one of them downloads nothing.
    foreach ($b in $install.builds) {
        $r = Read-Json (Join-Path (Join-Path $builds $b) 'install.json')
        $install.installed[$b] = if ($r) { @($r.artifacts_sha256) } else { $null }
    }
    if (Test-Path -LiteralPath $current) {
        $bin = (Get-Item -LiteralPath $current).Target | Select-Object -First 1
        $install.current = Split-Path -Leaf $bin
        $install.record = Read-Json (Join-Path $bin 'install.json')
        $install.version = Get-VersionLine $bin
        $install.binaries = Get-BinaryHashes $bin
    }
    $models = @{}
    foreach ($m in @($Spec.models)) {
        if (-not $m) { continue }
        $partial = Join-Path (Split-Path -Parent $m.path) ('.' + (Split-Path -Leaf $m.path) + '.partial')
        $present = if (Test-Path -LiteralPath $m.path) { $i = Get-Item -LiteralPath $m.path; @{ size = $i.Length; mtime_ticks = $i.LastWriteTimeUtc.Ticks } } else { $null }
        $models[$m.path] = @{ present = $present; verified = (Test-Verified $m.path $m.sha256)
                              partial_size = if (Test-Path -LiteralPath $partial) { (Get-Item -LiteralPath $partial).Length } else { 0 } }
    }
    $files = @{}
    foreach ($f in @($Spec.files)) { if ($f) { $files[$f] = Get-FileState $f } }
    foreach ($f in @($Spec.secrets)) {  # who may read each secret (a link in its place is reported, never followed)
        if ($f -and $files[$f]) { $files[$f].acl = Get-AclState $f; $files[$f].reparse_point = Test-Reparse (Get-Attributes $f) }
    }
    $folders = @{}  # the folders the deploy makes (an rpc-worker's cache): there as a folder, or null
    foreach ($d in @($Spec.folders)) {
        if ($d) { $folders[$d] = if (Test-Path -LiteralPath $d -PathType Container) { @{ kind = 'folder'; owner = (Get-Acl -LiteralPath $d).Owner } } else { $null } }
    }
    $services = @{}
    foreach ($id in @($Spec.winsw)) {
        if (-not $id) { continue }
        $svc = Get-Service -Name $id -ErrorAction SilentlyContinue
        $services[$id] = if ($svc) { "$($svc.Status)" } else { 'absent' }
    }
    $drivers = @{}
    if (@($Spec.drivers) -contains 'nvidia') {
        $smi = Get-Command nvidia-smi.exe -ErrorAction SilentlyContinue
        $drivers['nvidia-smi'] = if ($smi) { (& $smi.Source --query-gpu=driver_version,name,memory.total --format=csv,noheader) -join "`n" } else { $null }
    }
    $listening = @(Get-NetTCPConnection -State Listen -ErrorAction SilentlyContinue | ForEach-Object { "$($_.LocalAddress):$($_.LocalPort)" } | Sort-Object -Unique)
    $drive = Split-Path -Qualifier $Spec.models_dir
    [ordered]@{
        schema = 1; powershell = "$($PSVersionTable.PSVersion)"; install = $install; models = $models; files = $files; folders = $folders
        services = @{ winsw = $services }; listening = $listening
        disk_free = (Get-PSDrive -Name $drive.TrimEnd(':')).Free; drivers = $drivers
        driver_pending = Read-Json (Join-Path $Spec.install_dir 'state\driver-pending.json')
        tools = @{ winsw = if (Test-Path -LiteralPath (Join-Path $Spec.install_dir 'bin\winsw.exe')) { 'present' } else { $null } }
    } | ConvertTo-Json -Depth 8 -Compress
}

# The deploy sends the JSON base64-encoded (Windows OpenSSH's `powershell -c` strips double quotes).
try {
    $json = if ($SpecJson.TrimStart().StartsWith('{')) { $SpecJson } else { [Text.Encoding]::UTF8.GetString([Convert]::FromBase64String($SpecJson)) }
    $spec = $json | ConvertFrom-Json
} catch { Fail "bad JSON argument: $_" }
# Any other error (Stop makes every error terminating) is one line as well, never a PowerShell error record.
try {
    switch ($Verb) {
        'state' { Get-State $spec }
        'fetch' { "llamafleet: $(Invoke-Fetch $spec)" }
        'install' { "llamafleet: $(Invoke-Install $spec)" }
        'switch' { "llamafleet: $(Invoke-Switch $spec)" }
        'rollback' { "llamafleet: $(Invoke-Rollback $spec)" }
        'wait' { "llamafleet: $(Invoke-Wait $spec)" }
        'private' { "llamafleet: $(Invoke-Private $spec)" }
        'secret' { "llamafleet: $(Invoke-Secret $spec)" }
        default { Fail "usage: lf_host.ps1 state|fetch|install|switch|rollback|wait|private|secret SPEC_JSON" }
    }
} catch { Fail "$Verb failed: $($_.Exception.Message)" }
