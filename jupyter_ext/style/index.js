import './base.css';
import './allusers.css';
