# One-time bootstrap for a Windows host that llamafleet will manage (run it by hand, once, in an
# elevated PowerShell on the Windows machine). Afterwards `pyinfra inventory/cluster.py deploys/cluster.py`
# reaches the host over SSH with PowerShell as the shell, and installs everything else itself.
#
#   powershell -ExecutionPolicy Bypass -File bootstrap-openssh.ps1 `
#       -AuthorizedKey "ssh-ed25519 AAAA... deployer@controller" `
#       -InstallDir C:\llamafleet -WinSWExe .\WinSW-x64.exe
#
# What it does, each step skipped when already done:
#   1. installs the OpenSSH Server capability and starts sshd (automatic start);
#   2. sets PowerShell as OpenSSH's default shell (pyinfra 3 has no Windows support: llamafleet sends
#      PowerShell commands, and its inventory sets _shell_executable: null for Windows hosts);
#   3. authorizes the deployer's public key (administrators_authorized_keys for admin accounts);
#   4. opens TCP 22 in Windows Firewall for the private profile only;
#   5. sets the execution policy to RemoteSigned so the deploy's helper script (lf_host.ps1) may run;
#   6. places WinSW, the service wrapper llamafleet's Windows services use, at <InstallDir>\bin\winsw.exe.
#      Download WinSW-x64.exe (v2.12.0) from the WinSW releases page yourself and pass its path: the
#      script prints its SHA256 so you can compare it with the published one.
[CmdletBinding()]
param(
    [Parameter(Mandatory = $true)][string]$AuthorizedKey,
    [string]$InstallDir = 'C:\llamafleet',
    [Parameter(Mandatory = $true)][string]$WinSWExe
)
$ErrorActionPreference = 'Stop'

$principal = New-Object Security.Principal.WindowsPrincipal([Security.Principal.WindowsIdentity]::GetCurrent())
if (-not $principal.IsInRole([Security.Principal.WindowsBuiltInRole]::Administrator)) {
    throw 'llamafleet bootstrap: run this in an elevated PowerShell (Run as administrator)'
}

# 1. OpenSSH Server
$capability = Get-WindowsCapability -Online -Name 'OpenSSH.Server*' | Select-Object -First 1
if ($capability.State -ne 'Installed') {
    Write-Host "Installing $($capability.Name)"
    Add-WindowsCapability -Online -Name $capability.Name | Out-Null
}
Set-Service -Name sshd -StartupType Automatic
Start-Service sshd

# 2. PowerShell as the default shell for SSH sessions
$shell = (Get-Command powershell.exe).Source
$key = 'HKLM:\SOFTWARE\OpenSSH'
if ((Get-ItemProperty -Path $key -Name DefaultShell -ErrorAction SilentlyContinue).DefaultShell -ne $shell) {
    New-ItemProperty -Path $key -Name DefaultShell -Value $shell -PropertyType String -Force | Out-Null
    Restart-Service sshd
}

# 3. The deployer's key. Members of Administrators use administrators_authorized_keys, which sshd only
#    reads when it is writable by Administrators and SYSTEM alone.
$isAdmin = $principal.IsInRole([Security.Principal.WindowsBuiltInRole]::Administrator)
$keys = if ($isAdmin) { Join-Path $env:ProgramData 'ssh\administrators_authorized_keys' }
        else { Join-Path $env:USERPROFILE '.ssh\authorized_keys' }
New-Item -ItemType Directory -Force -Path (Split-Path -Parent $keys) | Out-Null
if (-not (Test-Path $keys) -or -not (Select-String -Path $keys -SimpleMatch $AuthorizedKey -Quiet)) {
    Add-Content -Path $keys -Value $AuthorizedKey -Encoding ascii
}
if ($isAdmin) { icacls.exe $keys /inheritance:r /grant 'Administrators:F' /grant 'SYSTEM:F' | Out-Null }

# 4. Firewall: SSH from the LAN (private profile) only
if (-not (Get-NetFirewallRule -Name 'llamafleet-sshd' -ErrorAction SilentlyContinue)) {
    New-NetFirewallRule -Name 'llamafleet-sshd' -DisplayName 'llamafleet: OpenSSH Server (TCP 22)' `
        -Direction Inbound -Protocol TCP -LocalPort 22 -Action Allow -Profile Private | Out-Null
}

# 5. Let the deploy run its own helper script (uploaded over SFTP, so it carries no download mark)
if ((Get-ExecutionPolicy -Scope LocalMachine) -in @('Restricted', 'AllSigned', 'Undefined')) {
    Set-ExecutionPolicy -Scope LocalMachine RemoteSigned -Force
}

# 6. WinSW for llamafleet's services
$bin = Join-Path $InstallDir 'bin'
New-Item -ItemType Directory -Force -Path $bin | Out-Null
Copy-Item -Force -Path $WinSWExe -Destination (Join-Path $bin 'winsw.exe')
Write-Host "WinSW SHA256: $((Get-FileHash -Algorithm SHA256 (Join-Path $bin 'winsw.exe')).Hash)  (compare with the release page)"

Write-Host "Done. Test from the controller: ssh $env:USERNAME@$(hostname) '`$PSVersionTable.PSVersion'"
